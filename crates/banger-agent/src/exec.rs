//! The `exec` request on one stream: start the process, stream its output,
//! feed it input, deliver signals and resizes, report its exit. Owns the
//! per-stream choreography; starting the process is `spawn.rs`, collecting
//! its exit status is the reaper's.
//!
//! How a stream runs after the request frame:
//!
//! 1. Spawn. Failure → one `Error` frame (`not_found`, `spawn_failed`).
//! 2. `Started { pid }`.
//! 3. Concurrently: one pump per output (stdout and stderr pipes, or the pty
//!    master) turns reads into `Stdout`/`Stderr` frames of at most 32 KiB;
//!    an input task applies the host's `Stdin`, `StdinEof`, `Signal` and
//!    `Resize` frames; this task writes the pumps' frames to the stream.
//! 4. If the host's side of the stream ends (or a write fails) before the
//!    process exited, the host is gone: SIGKILL the process group and stop.
//! 5. Once the process exited, each pump keeps reading until end of stream,
//!    or until it has been idle for [`DRAIN_IDLE`] (a background grandchild
//!    may hold the pipe open forever; what the process itself wrote is
//!    already buffered), at most [`DRAIN_MAX`].
//! 6. One `Exit` frame, then the stream is closed.

use std::time::Duration;

use banger_proto::{ExecRequest, ExitStatus, Frame, FrameKind, Resize, SignalMsg, Started};
use rustix::process::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::Agent;
use crate::console::chain;
use crate::fdio::FdStream;
use crate::spawn::{self, ChildIo};

/// How long output may stay quiet after the process exited before the
/// stream is finished without waiting for end of file.
pub const DRAIN_IDLE: Duration = Duration::from_millis(100);
/// Upper bound on draining output after the process exited.
pub const DRAIN_MAX: Duration = Duration::from_secs(2);
/// Largest payload of an output frame.
pub const MAX_OUTPUT_FRAME: usize = 32 * 1024;

/// Runs one exec request; `input` and `output` are the two halves of its
/// stream, positioned after the request frame.
pub async fn run<R, W>(agent: &Agent, req: ExecRequest, input: R, mut output: W)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let child = match spawn::spawn(&req, &agent.exec, agent.reaper) {
        Ok(child) => child,
        Err(e) => {
            let _ = crate::channel::write_error(&mut output, e.code(), chain(&e)).await;
            let _ = output.shutdown().await;
            return;
        }
    };
    let pgid = crate::reaper::pid(child.pid);
    let kill = move || {
        if let Some(pgid) = pgid {
            let _ = rustix::process::kill_process_group(pgid, Signal::Kill);
        }
    };
    if banger_proto::write_frame(
        &mut output,
        &Frame::json(FrameKind::Started, &Started { pid: child.pid }),
    )
    .await
    .is_err()
    {
        kill();
        return;
    }

    let (exited_tx, exited_rx) = watch::channel(false);
    let (frames_tx, mut frames) = mpsc::channel::<Frame>(4);
    let sink = match child.io {
        ChildIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            tokio::spawn(pump(
                stdout,
                FrameKind::Stdout,
                frames_tx.clone(),
                exited_rx.clone(),
            ));
            tokio::spawn(pump(stderr, FrameKind::Stderr, frames_tx, exited_rx));
            Sink::Pipe(stdin)
        }
        ChildIo::Pty(master) => {
            tokio::spawn(pump(
                master.clone(),
                FrameKind::Stdout,
                frames_tx,
                exited_rx,
            ));
            Sink::Pty(master)
        }
    };
    let mut host = tokio::spawn(apply_input(input, sink, pgid));
    let mut exited = child.exited;

    let mut status: Option<ExitStatus> = None;
    let mut output_open = true;
    while status.is_none() || output_open {
        tokio::select! {
            frame = frames.recv(), if output_open => match frame {
                Some(frame) => {
                    if banger_proto::write_frame(&mut output, &frame).await.is_err() {
                        break;
                    }
                }
                None => output_open = false,
            },
            result = &mut exited, if status.is_none() => {
                // A dropped sender means the reaper lost the child; report it as killed.
                status = Some(result.unwrap_or(ExitStatus { code: 137, signal: Some(9) }));
                let _ = exited_tx.send(true);
            },
            _ = &mut host => break,
        }
    }
    match status {
        Some(status) if !output_open => {
            let _ = banger_proto::write_frame(&mut output, &Frame::json(FrameKind::Exit, &status))
                .await;
            let _ = output.shutdown().await;
        }
        // The host went away while output was still draining.
        Some(_) => {}
        // The host went away while the process ran.
        None => kill(),
    }
    host.abort();
}

/// Where `Stdin` frames go.
enum Sink {
    Pipe(tokio::net::unix::pipe::Sender),
    Pty(FdStream),
}

/// Applies the host's frames until its side of the stream ends.
async fn apply_input<R: AsyncRead + Unpin>(
    mut input: R,
    sink: Sink,
    pgid: Option<rustix::process::Pid>,
) {
    let (mut stdin, pty) = match sink {
        Sink::Pipe(pipe) => (
            Some(Box::new(pipe) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>),
            None,
        ),
        Sink::Pty(master) => (Some(Box::new(master.clone()) as _), Some(master)),
    };
    while let Ok(Some(frame)) = banger_proto::read_frame(&mut input).await {
        match frame.kind {
            FrameKind::Stdin => {
                if let Some(w) = stdin.as_mut() {
                    // EPIPE: the process closed its stdin; drop further input.
                    if w.write_all(&frame.payload).await.is_err() {
                        stdin = None;
                    }
                }
            }
            // A terminal cannot be half-closed; the host sends ^D itself.
            FrameKind::StdinEof if pty.is_none() => stdin = None,
            FrameKind::Signal => {
                let sig = frame
                    .parse::<SignalMsg>()
                    .ok()
                    .and_then(|m| Signal::from_raw(m.signal));
                if let (Some(sig), Some(pgid)) = (sig, pgid) {
                    let _ = rustix::process::kill_process_group(pgid, sig);
                }
            }
            FrameKind::Resize => {
                if let (Some(master), Ok(size)) = (&pty, frame.parse::<Resize>()) {
                    let _ = banger_sys::pty::set_window_size(master, size.rows, size.cols);
                }
            }
            _ => {}
        }
    }
}

/// Turns reads from one output into frames; see steps 3 and 5 of the module doc.
async fn pump<R: AsyncRead + Unpin>(
    src: R,
    kind: FrameKind,
    frames: mpsc::Sender<Frame>,
    exited: watch::Receiver<bool>,
) {
    let mut drain = Drain::new(src, exited);
    while let Some(chunk) = drain.next().await {
        if frames.send(Frame::new(kind, chunk.to_vec())).await.is_err() {
            break;
        }
    }
}

/// A command's output stream read to its end: until EOF, or, once `exited`
/// changes (the command is gone), only while output still comes —
/// [`DRAIN_IDLE`] apart, [`DRAIN_MAX`] in all — so a background grandchild
/// holding the pipe cannot keep it open.
pub struct Drain<R> {
    src: R,
    exited: watch::Receiver<bool>,
    until: Option<Instant>,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Drain<R> {
    pub fn new(src: R, exited: watch::Receiver<bool>) -> Drain<R> {
        Drain {
            src,
            exited,
            until: None,
            buf: vec![0u8; MAX_OUTPUT_FRAME],
        }
    }

    /// The next chunk (at most [`MAX_OUTPUT_FRAME`] bytes), or `None` at the end.
    pub async fn next(&mut self) -> Option<&[u8]> {
        loop {
            let read = match self.until {
                None => tokio::select! {
                    read = self.src.read(&mut self.buf) => read,
                    _ = self.exited.changed() => {
                        self.until = Some(Instant::now() + DRAIN_MAX);
                        continue;
                    }
                },
                Some(deadline) => {
                    let idle = Instant::now() + DRAIN_IDLE;
                    match tokio::time::timeout_at(idle.min(deadline), self.src.read(&mut self.buf))
                        .await
                    {
                        Ok(read) => read,
                        Err(_) => return None,
                    }
                }
            };
            return match read {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(&self.buf[..n]),
            };
        }
    }
}
