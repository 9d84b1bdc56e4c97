//! `banger vm exec`, and the exec session `vm run` shares: a guest command
//! whose stdio, signals and terminal size are wired to ours, ending with its
//! exit status.
//!
//! A session, step by step (the frames are banger-proto's):
//!
//! 1. Open the upgraded stream (`client.rs`); with `-t`, put the local
//!    terminal in raw mode and send its size in the request.
//! 2. Read the first frame: `Started`, or `Error` (`not_found` → 127,
//!    `spawn_failed` → 126, anything else → 125).
//! 3. Until `Exit`: `Stdout`/`Stderr` frames are written to ours and flushed;
//!    local stdin becomes `Stdin` frames then `StdinEof`; SIGINT, SIGTERM,
//!    SIGHUP and SIGQUIT become `Signal` frames instead of ending banger;
//!    SIGWINCH becomes `Resize` with `-t`.
//! 4. `Exit` gives our exit status. A stream that ends before it means the
//!    guest was lost (125).

use std::pin::pin;

use anyhow::{Context as _, anyhow};
use banger_proto::{
    ErrorBody, ExecRequest, ExitStatus, Frame, FrameKind, Resize, SignalMsg, read_frame,
    write_frame,
};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::Context;
use crate::cli::ExecArgs;
use crate::client::Client;
use crate::exit::{self, ExitError};
use crate::terminal;

const STDIN_CHUNK: usize = 32 * 1024;

pub async fn run(ctx: &Context, args: ExecArgs) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let cwd = args.workdir;
    let request = ExecRequest {
        argv: args.command,
        env: args.env,
        cwd,
        tty: args.tty,
        size: None,
    };
    exec_in_vm(&client, &args.name, request).await
}

/// Runs a command in the VM with our stdio (see the module doc) and returns
/// its exit status; refusals carry 125-127 in an [`ExitError`].
pub async fn exec_in_vm(
    client: &Client,
    vm: &str,
    mut request: ExecRequest,
) -> anyhow::Result<i32> {
    if request.tty {
        if !terminal::stdin_is_terminal() {
            anyhow::bail!("-t needs a terminal on stdin; drop -t to pipe input");
        }
        request.size = terminal::size();
    }
    let stream = client.exec(vm, &request).await?;
    let raw = if request.tty {
        Some(terminal::RawMode::enable().context("cannot put the terminal in raw mode")?)
    } else {
        None
    };
    let (control_tx, control_rx) = mpsc::channel(16);
    let forwarder = tokio::spawn(forward_signals(control_tx, request.tty));
    let end = session(
        stream,
        tokio::io::stdin(),
        tokio::io::stdout(),
        tokio::io::stderr(),
        control_rx,
    )
    .await;
    forwarder.abort();
    drop(raw);
    exit_code(end?)
}

/// How a session ended, when it ended by the guest's word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    Exited(ExitStatus),
    /// The agent refused or failed the command.
    Refused(ErrorBody),
}

/// Our exit status for a session's end.
pub fn exit_code(end: ExecEnd) -> anyhow::Result<i32> {
    match end {
        ExecEnd::Exited(status) => Ok(status.code),
        ExecEnd::Refused(body) => {
            let code = match body.code.as_str() {
                "not_found" => exit::NOT_FOUND,
                "spawn_failed" => exit::NOT_EXECUTABLE,
                _ => exit::GUEST_RUNNER_FAILURE,
            };
            Err(ExitError::new(code, body.message).into())
        }
    }
}

/// What the session forwards besides stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Signal(i32),
    Resize(Resize),
}

async fn forward_signals(tx: mpsc::Sender<Control>, tty: bool) -> std::io::Result<()> {
    use rustix::process::Signal as S;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut winch = signal(SignalKind::window_change())?;
    loop {
        let control = tokio::select! {
            _ = int.recv() => Control::Signal(S::Int as i32),
            _ = term.recv() => Control::Signal(S::Term as i32),
            _ = hup.recv() => Control::Signal(S::Hup as i32),
            _ = quit.recv() => Control::Signal(S::Quit as i32),
            _ = winch.recv() => match terminal::size() {
                Some(size) if tty => Control::Resize(size),
                _ => continue,
            },
        };
        if tx.send(control).await.is_err() {
            return Ok(());
        }
    }
}

fn lost() -> anyhow::Error {
    ExitError::new(
        exit::GUEST_RUNNER_FAILURE,
        "connection to the guest was lost",
    )
    .into()
}

/// Drives one exec stream until the guest's `Exit` (see the module doc).
pub async fn session<S, I, O, E>(
    stream: S,
    mut stdin: I,
    mut stdout: O,
    mut stderr: E,
    mut control: mpsc::Receiver<Control>,
) -> anyhow::Result<ExecEnd>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let (reader, mut writer) = tokio::io::split(stream);
    // A stream keeps a half-read frame across `select!` iterations, which a
    // bare `read_frame` future dropped by the select would lose.
    let frames = futures::stream::unfold(reader, |mut reader| async move {
        match read_frame(&mut reader).await {
            Ok(Some(frame)) => Some((Ok(frame), reader)),
            Ok(None) => None,
            Err(err) => Some((Err(err), reader)),
        }
    });
    let mut frames = pin!(frames);

    match frames.next().await {
        // `Started` for exec; `Response` (the session) for a session attach.
        Some(Ok(frame)) if matches!(frame.kind, FrameKind::Started | FrameKind::Response) => {}
        Some(Ok(frame)) if frame.kind == FrameKind::Error => {
            return Ok(ExecEnd::Refused(frame.parse()?));
        }
        Some(Ok(frame)) => {
            return Err(anyhow!(
                "the guest answered {:?} instead of starting the command",
                frame.kind
            ));
        }
        _ => return Err(lost()),
    }

    let mut buf = vec![0u8; STDIN_CHUNK];
    let mut stdin_open = true;
    let mut control_open = true;
    // Once a write to the guest fails, only reading remains: the `Exit`
    // frame (or the end of the stream) may still be on its way.
    let mut writable = true;
    loop {
        let outgoing = tokio::select! {
            frame = frames.next() => {
                let Some(Ok(frame)) = frame else { return Err(lost()) };
                match frame.kind {
                    FrameKind::Stdout => copy_out(&mut stdout, &frame.payload).await.context("cannot write to stdout")?,
                    FrameKind::Stderr => copy_out(&mut stderr, &frame.payload).await.context("cannot write to stderr")?,
                    FrameKind::Exit => return Ok(ExecEnd::Exited(frame.parse()?)),
                    FrameKind::Error => return Ok(ExecEnd::Refused(frame.parse()?)),
                    _ => {}
                }
                None
            }
            read = stdin.read(&mut buf), if stdin_open && writable => match read {
                Ok(n) if n > 0 => Some(Frame::new(FrameKind::Stdin, &buf[..n])),
                _ => {
                    stdin_open = false;
                    Some(Frame::new(FrameKind::StdinEof, Vec::new()))
                }
            },
            ctl = control.recv(), if control_open && writable => match ctl {
                Some(Control::Signal(signal)) => Some(Frame::json(FrameKind::Signal, &SignalMsg { signal })),
                Some(Control::Resize(size)) => Some(Frame::json(FrameKind::Resize, &size)),
                None => {
                    control_open = false;
                    None
                }
            },
        };
        if let Some(frame) = outgoing
            && write_frame(&mut writer, &frame).await.is_err()
        {
            writable = false;
        }
    }
}

async fn copy_out<W: AsyncWrite + Unpin>(out: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes).await?;
    out.flush().await
}

#[cfg(test)]
mod tests {
    use banger_api::{EXEC_HEADER, EXEC_UPGRADE};
    use hyper::StatusCode;
    use hyper::header::{CONNECTION, UPGRADE};
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::client::test_server::{json, serve};

    fn refused(code: &str) -> ExecEnd {
        ExecEnd::Refused(ErrorBody {
            code: code.into(),
            message: format!("{code}: sh"),
        })
    }

    fn code_of(end: ExecEnd) -> i32 {
        match exit_code(end) {
            Ok(code) => code,
            Err(err) => exit::code_of(&err, 1),
        }
    }

    #[test]
    fn guest_statuses_pass_through_and_refusals_map_like_docker() {
        assert_eq!(
            code_of(ExecEnd::Exited(ExitStatus {
                code: 7,
                signal: None
            })),
            7
        );
        assert_eq!(
            code_of(ExecEnd::Exited(ExitStatus {
                code: 130,
                signal: Some(2)
            })),
            130
        );
        assert_eq!(code_of(refused("not_found")), 127);
        assert_eq!(code_of(refused("spawn_failed")), 126);
        assert_eq!(code_of(refused("bad_request")), 125);
    }

    /// Plays the agent's side of a session on `guest`.
    async fn agent(
        mut guest: impl AsyncRead + AsyncWrite + Unpin,
        frames: Vec<Frame>,
    ) -> Vec<Frame> {
        for frame in &frames {
            write_frame(&mut guest, frame).await.unwrap();
        }
        let mut got = Vec::new();
        while let Ok(Some(frame)) = read_frame(&mut guest).await {
            got.push(frame);
        }
        got
    }

    fn exit_frame(code: i32) -> Frame {
        Frame::json(FrameKind::Exit, &ExitStatus { code, signal: None })
    }

    #[tokio::test]
    async fn exec_over_an_upgraded_connection_returns_the_guests_status() {
        let server = serve(|mut req| async move {
            assert_eq!(req.uri().path(), "/v1/vms/web/exec");
            assert_eq!(req.headers()[UPGRADE], EXEC_UPGRADE);
            let exec: ExecRequest =
                serde_json::from_slice(req.headers()[EXEC_HEADER].as_bytes()).unwrap();
            assert_eq!(exec.argv, ["sh", "-c", "echo hi; exit 7"]);
            tokio::spawn(async move {
                let upgraded = hyper::upgrade::on(&mut req).await.unwrap();
                let frames = vec![
                    Frame::json(FrameKind::Started, &banger_proto::Started { pid: 9 }),
                    Frame::new(FrameKind::Stdout, b"hi".to_vec()),
                    exit_frame(7),
                ];
                agent(TokioIo::new(upgraded), frames).await;
            });
            let mut response = json(StatusCode::SWITCHING_PROTOCOLS, serde_json::Value::Null);
            response
                .headers_mut()
                .insert(CONNECTION, "Upgrade".parse().unwrap());
            response
                .headers_mut()
                .insert(UPGRADE, EXEC_UPGRADE.parse().unwrap());
            response
        });
        let request = ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi; exit 7".into()],
            ..Default::default()
        };
        let stream = server.client.exec("web", &request).await.unwrap();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let (_tx, rx) = mpsc::channel(1);
        let end = session(stream, tokio::io::empty(), &mut stdout, &mut stderr, rx)
            .await
            .unwrap();
        assert_eq!(exit_code(end).unwrap(), 7);
        assert_eq!(stdout, b"hi");
        assert!(stderr.is_empty());
    }

    #[tokio::test]
    async fn an_exec_the_daemon_refuses_reads_its_error() {
        let server = serve(|_| async {
            json(
                StatusCode::CONFLICT,
                serde_json::json!({"code": "conflict", "message": "vm web is stopped"}),
            )
        });
        let err = server
            .client
            .exec("web", &ExecRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "vm web is stopped");
    }

    #[tokio::test]
    async fn stdin_and_signals_reach_the_guest() {
        let (host, guest) = tokio::io::duplex(1024);
        let (tx, rx) = mpsc::channel(4);
        tx.send(Control::Signal(2)).await.unwrap();
        let agent = tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(guest);
            write_frame(
                &mut wr,
                &Frame::json(FrameKind::Started, &banger_proto::Started { pid: 1 }),
            )
            .await
            .unwrap();
            let mut got = Vec::new();
            while got.len() < 3 {
                got.push(read_frame(&mut rd).await.unwrap().unwrap());
            }
            write_frame(&mut wr, &Frame::new(FrameKind::Stderr, b"bye".to_vec()))
                .await
                .unwrap();
            write_frame(&mut wr, &exit_frame(130)).await.unwrap();
            got
        });
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let end = session(host, &b"input"[..], &mut stdout, &mut stderr, rx)
            .await
            .unwrap();
        assert_eq!(
            end,
            ExecEnd::Exited(ExitStatus {
                code: 130,
                signal: None
            })
        );
        assert_eq!(stderr, b"bye");
        let mut kinds: Vec<_> = agent
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.kind, f.payload))
            .collect();
        kinds.sort_by_key(|(k, _)| *k as u8);
        assert_eq!(
            kinds,
            [
                (FrameKind::Stdin, b"input".to_vec()),
                (FrameKind::StdinEof, Vec::new()),
                (FrameKind::Signal, br#"{"signal":2}"#.to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn a_stream_that_ends_before_exit_is_a_lost_guest() {
        let (host, guest) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut guest = guest;
            write_frame(
                &mut guest,
                &Frame::json(FrameKind::Started, &banger_proto::Started { pid: 1 }),
            )
            .await
            .unwrap();
            // Dropping the stream here is the guest going away.
        });
        let (_tx, rx) = mpsc::channel(1);
        let err = session(
            host,
            tokio::io::empty(),
            tokio::io::sink(),
            tokio::io::sink(),
            rx,
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "connection to the guest was lost");
        assert_eq!(exit::code_of(&err, 1), 125);
    }

    #[tokio::test]
    async fn a_refusal_before_start_is_reported() {
        let (host, guest) = tokio::io::duplex(1024);
        let body = ErrorBody {
            code: "not_found".into(),
            message: "nope: command not found".into(),
        };
        tokio::spawn(agent(guest, vec![Frame::json(FrameKind::Error, &body)]));
        let (_tx, rx) = mpsc::channel(1);
        let end = session(
            host,
            tokio::io::empty(),
            tokio::io::sink(),
            tokio::io::sink(),
            rx,
        )
        .await
        .unwrap();
        assert_eq!(end, ExecEnd::Refused(body));
    }
}
