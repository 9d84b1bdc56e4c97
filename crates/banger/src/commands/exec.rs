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
//!    SIGWINCH becomes `Resize` with `-t`. Frames to the guest are written
//!    by their own task, so a guest that stops reading never blocks this
//!    loop: stdin waits for room in a small queue, signals never wait.
//! 4. `Exit` gives our exit status. A stream that ends before it means the
//!    guest was lost (125).
//!
//! A guest that stops answering must not hold banger (see [`Interrupts`]):
//! after the first SIGINT or SIGTERM the guest has [`INTERRUPT_GRACE`] to
//! send `Exit`, and a second one ends the session at once; both end it with
//! 125. With `-t`, Ctrl-C is a byte to the guest's terminal rather than a
//! signal, so there the guest only has to answer something within the grace
//! (its terminal echoes `^C`). Leaving closes the stream, and the agent
//! kills the command when it sees that.

use std::pin::pin;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use banger_proto::{
    ErrorBody, ExecRequest, ExitStatus, Frame, FrameKind, Resize, SignalMsg, read_frame,
    write_frame,
};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Context;
use crate::cli::ExecArgs;
use crate::client::Client;
use crate::exit::{self, ExitError};
use crate::terminal;

const STDIN_CHUNK: usize = 32 * 1024;
/// Stdin frames queued for the guest before we stop reading stdin.
const STDIN_QUEUE: usize = 4;
/// How long the guest has to end its command after our first interrupt.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// The byte a terminal in raw mode sends for Ctrl-C.
const CTRL_C: u8 = 0x03;

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
        Interrupts::new(request.tty, INTERRUPT_GRACE),
    )
    .await;
    forwarder.abort();
    drop(raw);
    let why = "the daemon stopped while the command ran, which ends the command \
               (see `banger daemon status` and the daemon's log)";
    exit_code(lost_daemon(client, end, why).await?)
}

/// `end`, unless it is a lost connection to the guest whose cause is that
/// the daemon is gone: then an error saying so, and `why` it matters.
pub async fn lost_daemon<T>(
    client: &Client,
    end: anyhow::Result<T>,
    why: &str,
) -> anyhow::Result<T> {
    match end {
        Err(err) if is_lost(&err) && client.daemon_gone().await => {
            Err(ExitError::new(exit::GUEST_RUNNER_FAILURE, format!("{LOST}: {why}")).into())
        }
        end => end,
    }
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

const LOST: &str = "connection to the guest was lost";

fn lost() -> anyhow::Error {
    ExitError::new(exit::GUEST_RUNNER_FAILURE, LOST).into()
}

fn is_lost(err: &anyhow::Error) -> bool {
    err.downcast_ref::<ExitError>()
        .is_some_and(|e| e.message == LOST)
}

/// How our interrupts end a session whose guest does not answer them.
///
/// The first SIGINT or SIGTERM is the guest's to handle: it goes over as a
/// `Signal`, and the guest has `grace` to send `Exit`. A second one, or the
/// grace running out, ends the session (125) without waiting any longer.
/// With a terminal (`tty`), Ctrl-C arrives as a byte on stdin; a live guest
/// answers it at once (its terminal echoes it), so there any frame from the
/// guest within `grace` will do.
#[derive(Debug)]
pub struct Interrupts {
    tty: bool,
    grace: Duration,
    signals: u32,
    /// Set by the first signal; only `Exit` settles it.
    exit_due: Option<Instant>,
    /// Set by a Ctrl-C byte; any frame from the guest settles it.
    answer_due: Option<Instant>,
}

impl Interrupts {
    pub fn new(tty: bool, grace: Duration) -> Interrupts {
        Interrupts {
            tty,
            grace,
            signals: 0,
            exit_due: None,
            answer_due: None,
        }
    }

    /// Notes a signal we forward; an error when it is the second interrupt.
    fn signal(&mut self, signal: i32) -> anyhow::Result<()> {
        use rustix::process::Signal as S;
        if signal != S::Int as i32 && signal != S::Term as i32 {
            return Ok(());
        }
        self.signals += 1;
        if self.signals > 1 {
            return Err(ExitError::new(
                exit::GUEST_RUNNER_FAILURE,
                "interrupted again: stopped waiting for the guest",
            )
            .into());
        }
        self.exit_due.get_or_insert(Instant::now() + self.grace);
        Ok(())
    }

    /// Notes stdin bytes going to the guest: with a terminal, Ctrl-C.
    fn input(&mut self, bytes: &[u8]) {
        if self.tty && bytes.contains(&CTRL_C) {
            self.answer_due.get_or_insert(Instant::now() + self.grace);
        }
    }

    /// Notes that the guest sent a frame.
    fn answered(&mut self) {
        self.answer_due = None;
    }

    /// Resolves when the guest has had its grace and not used it.
    async fn expired(&self) {
        match self.exit_due.into_iter().chain(self.answer_due).min() {
            Some(due) => tokio::time::sleep_until(due).await,
            None => std::future::pending().await,
        }
    }

    fn gave_up(&self) -> anyhow::Error {
        ExitError::new(
            exit::GUEST_RUNNER_FAILURE,
            format!(
                "the guest did not answer within {} s of the interrupt: stopped waiting for it",
                self.grace.as_secs_f32()
            ),
        )
        .into()
    }
}

/// Drives one exec stream until the guest's `Exit` (see the module doc).
pub async fn session<S, I, O, E>(
    stream: S,
    mut stdin: I,
    mut stdout: O,
    mut stderr: E,
    mut control: mpsc::Receiver<Control>,
    mut interrupts: Interrupts,
) -> anyhow::Result<ExecEnd>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let (reader, writer) = tokio::io::split(stream);
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

    let (to_guest, _writing) = spawn_writer(writer);
    let mut buf = vec![0u8; STDIN_CHUNK];
    let mut stdin_open = true;
    let mut control_open = true;
    // Room for one stdin frame: stdin is read only when the guest keeps up.
    let mut room: Option<mpsc::OwnedPermit<Frame>> = None;
    loop {
        tokio::select! {
            frame = frames.next() => {
                let Some(Ok(frame)) = frame else { return Err(lost()) };
                interrupts.answered();
                match frame.kind {
                    FrameKind::Stdout => copy_out(&mut stdout, &frame.payload).await.context("cannot write to stdout")?,
                    FrameKind::Stderr => copy_out(&mut stderr, &frame.payload).await.context("cannot write to stderr")?,
                    FrameKind::Exit => return Ok(ExecEnd::Exited(frame.parse()?)),
                    FrameKind::Error => return Ok(ExecEnd::Refused(frame.parse()?)),
                    _ => {}
                }
            }
            () = interrupts.expired() => return Err(interrupts.gave_up()),
            permit = to_guest.stdin.clone().reserve_owned(), if stdin_open && room.is_none() => match permit {
                Ok(permit) => room = Some(permit),
                // The writer stopped: only reading remains, the `Exit`
                // frame (or the end of the stream) may still be on its way.
                Err(_) => stdin_open = false,
            },
            read = stdin.read(&mut buf), if stdin_open && room.is_some() => {
                let Some(permit) = room.take() else { continue };
                match read {
                    Ok(n) if n > 0 => {
                        interrupts.input(&buf[..n]);
                        permit.send(Frame::new(FrameKind::Stdin, &buf[..n]));
                    }
                    _ => {
                        stdin_open = false;
                        permit.send(Frame::new(FrameKind::StdinEof, Vec::new()));
                    }
                }
            }
            ctl = control.recv(), if control_open => match ctl {
                Some(Control::Signal(signal)) => {
                    interrupts.signal(signal)?;
                    let _ = to_guest.control.send(Frame::json(FrameKind::Signal, &SignalMsg { signal }));
                }
                Some(Control::Resize(size)) => {
                    let _ = to_guest.control.send(Frame::json(FrameKind::Resize, &size));
                }
                None => control_open = false,
            },
        }
    }
}

/// Where frames to the guest go: `control` (signals, resizes: few, and
/// never held up) is written before `stdin`.
struct ToGuest {
    control: mpsc::UnboundedSender<Frame>,
    stdin: mpsc::Sender<Frame>,
}

/// The writer task, stopped when the session ends however it ends: a
/// guest that stopped reading would hold it forever.
struct Writing(tokio::task::JoinHandle<()>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes frames to the guest until both queues close or a write fails.
fn spawn_writer<W>(mut writer: W) -> (ToGuest, Writing)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (control, mut control_rx) = mpsc::unbounded_channel();
    let (stdin, mut stdin_rx) = mpsc::channel(STDIN_QUEUE);
    let task = tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                biased;
                Some(frame) = control_rx.recv() => frame,
                Some(frame) = stdin_rx.recv() => frame,
                else => return,
            };
            if write_frame(&mut writer, &frame).await.is_err() {
                return;
            }
        }
    });
    (ToGuest { control, stdin }, Writing(task))
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

    /// Interrupts that give the guest far longer than any test runs.
    fn patient() -> Interrupts {
        Interrupts::new(false, Duration::from_secs(600))
    }

    fn started() -> Frame {
        Frame::json(FrameKind::Started, &banger_proto::Started { pid: 1 })
    }

    /// A guest whose agent stops answering once the command started: it
    /// neither writes nor reads again, and keeps the stream open.
    fn hung_guest() -> tokio::io::DuplexStream {
        let (host, mut guest) = tokio::io::duplex(256);
        tokio::spawn(async move {
            write_frame(&mut guest, &started()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(600)).await;
            drop(guest);
        });
        host
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
        let end = session(
            stream,
            tokio::io::empty(),
            &mut stdout,
            &mut stderr,
            rx,
            patient(),
        )
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
        let end = session(host, &b"input"[..], &mut stdout, &mut stderr, rx, patient())
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
            patient(),
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
            patient(),
        )
        .await
        .unwrap();
        assert_eq!(end, ExecEnd::Refused(body));
    }

    #[tokio::test]
    async fn a_second_interrupt_ends_a_session_whose_guest_stopped_reading() {
        // Stdin far larger than the stream's buffers: the writer is stuck.
        let input = vec![b'x'; 1 << 20];
        let (tx, rx) = mpsc::channel(4);
        let started = std::time::Instant::now();
        let run = tokio::spawn(async move {
            session(
                hung_guest(),
                std::io::Cursor::new(input),
                tokio::io::sink(),
                tokio::io::sink(),
                rx,
                patient(),
            )
            .await
        });
        tx.send(Control::Signal(2)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!run.is_finished(), "the first interrupt is the guest's");
        tx.send(Control::Signal(15)).await.unwrap();
        let err = run.await.unwrap().unwrap_err();
        assert_eq!(exit::code_of(&err, 1), 125);
        assert!(err.to_string().contains("interrupted again"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_interrupt_the_guest_never_answers_ends_the_session_after_the_grace() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Control::Signal(2)).await.unwrap();
        let started = std::time::Instant::now();
        let err = session(
            hung_guest(),
            tokio::io::empty(),
            tokio::io::sink(),
            tokio::io::sink(),
            rx,
            Interrupts::new(false, Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
        assert_eq!(exit::code_of(&err, 1), 125);
        assert!(err.to_string().contains("did not answer"), "{err}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn signals_other_than_interrupts_start_no_grace() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Control::Signal(1)).await.unwrap(); // SIGHUP
        tx.send(Control::Signal(1)).await.unwrap();
        let run = tokio::spawn(session(
            hung_guest(),
            tokio::io::empty(),
            tokio::io::sink(),
            tokio::io::sink(),
            rx,
            Interrupts::new(false, Duration::from_millis(50)),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!run.is_finished());
        run.abort();
    }

    #[tokio::test]
    async fn with_a_terminal_ctrl_c_needs_only_an_answer_within_the_grace() {
        // A live guest echoes ^C, then its command goes on quietly.
        let (host, guest) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let (mut rd, mut wr) = tokio::io::split(guest);
            write_frame(&mut wr, &started()).await.unwrap();
            let stdin = read_frame(&mut rd).await.unwrap().unwrap();
            assert_eq!(stdin.payload, [CTRL_C]);
            write_frame(&mut wr, &Frame::new(FrameKind::Stdout, b"^C".to_vec()))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
            write_frame(&mut wr, &exit_frame(0)).await.unwrap();
            while let Ok(Some(_)) = read_frame(&mut rd).await {}
        });
        let (_tx, rx) = mpsc::channel(1);
        let mut stdout = Vec::new();
        let end = session(
            host,
            &[CTRL_C][..],
            &mut stdout,
            tokio::io::sink(),
            rx,
            Interrupts::new(true, Duration::from_millis(100)),
        )
        .await
        .unwrap();
        assert_eq!(exit_code(end).unwrap(), 0);
        assert_eq!(stdout, b"^C");

        // A hung one says nothing: the session ends after the grace.
        let (_tx, rx) = mpsc::channel(1);
        let err = session(
            hung_guest(),
            &[CTRL_C][..],
            tokio::io::sink(),
            tokio::io::sink(),
            rx,
            Interrupts::new(true, Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
        assert_eq!(exit::code_of(&err, 1), 125);
    }
}
