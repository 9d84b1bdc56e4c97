//! One session: what it is, its output, its stdin, and the task that
//! watches its process. Owns a session's state and its changes; does not own
//! the registry of sessions (`mod.rs`) nor any stream (`follow.rs`).
//!
//! 1. [`Session::running`] holds the process's stdin pipe; [`supervise`]
//!    reads stdout and stderr into the scrollback and waits for the reaper
//!    to report the exit.
//! 2. Every append and the end bump a watch channel, so readers
//!    ([`Session::read`] then [`Session::changed`]) never miss output.
//! 3. After the exit the pipes are drained as exec drains them (a
//!    grandchild may hold them open forever), then the session is `exited`
//!    and readers see the end only after the last byte.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use banger_proto::{ExitStatus, SessionInfo, SessionState};
use rustix::process::Signal;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::scrollback::Scrollback;
use crate::exec::{Drain, MAX_OUTPUT_FRAME};

/// What a session is, before it has any output.
#[derive(Debug, Clone)]
pub struct Launch {
    pub name: String,
    pub argv: Vec<String>,
    pub cwd: String,
}

#[derive(Debug)]
pub struct Session {
    /// When it was recorded, finer than `started_at`, to order sessions.
    born: Instant,
    state: Mutex<State>,
    changes: watch::Sender<()>,
    /// `None` once closed (by an attacher's `StdinEof` or a failed write).
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
}

#[derive(Debug)]
struct State {
    info: SessionInfo,
    output: Scrollback,
    /// The reaper reported the exit: the pid may be reused, signal no more.
    reaped: bool,
}

/// What a reader gets from [`Session::read`].
#[derive(Debug, PartialEq)]
pub enum Chunk {
    /// Output starting at `from` (later than asked if that was forgotten).
    Data { from: u64, bytes: Vec<u8> },
    /// Nothing yet at this offset; wait for [`Session::changed`].
    Pending,
    /// Everything was read and the session ended: with its exit status, or
    /// `None` if it never ran.
    Ended(Option<ExitStatus>),
}

impl Session {
    /// A session whose process never started; `error` says why.
    pub fn failed(launch: Launch, error: String) -> Arc<Session> {
        let mut info = info(launch, SessionState::Failed, None);
        info.ended_at = Some(info.started_at);
        info.error = Some(error);
        Self::new(info, None, 1)
    }

    /// A session whose process runs as `pid` with `stdin`, keeping at most
    /// `scrollback` bytes of output.
    pub fn running(
        launch: Launch,
        pid: u32,
        stdin: pipe::Sender,
        scrollback: usize,
    ) -> Arc<Session> {
        let info = info(launch, SessionState::Running, Some(pid));
        Self::new(info, Some(stdin), scrollback)
    }

    fn new(info: SessionInfo, stdin: Option<pipe::Sender>, scrollback: usize) -> Arc<Session> {
        Arc::new(Session {
            born: Instant::now(),
            state: Mutex::new(State {
                info,
                output: Scrollback::new(scrollback),
                reaped: false,
            }),
            changes: watch::channel(()).0,
            stdin: tokio::sync::Mutex::new(stdin),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn info(&self) -> SessionInfo {
        let state = self.lock();
        SessionInfo {
            output_bytes: state.output.end(),
            retained_from: state.output.start(),
            ..state.info.clone()
        }
    }

    pub fn born(&self) -> Instant {
        self.born
    }

    pub fn is_running(&self) -> bool {
        self.lock().info.state == SessionState::Running
    }

    /// A receiver that [`Self::changed`] waits on; take it before the first
    /// [`Self::read`].
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
    }

    /// Up to one frame of output from `offset`, or where the session is.
    pub fn read(&self, offset: u64) -> Chunk {
        let state = self.lock();
        let (from, bytes) = state.output.read(offset, MAX_OUTPUT_FRAME);
        if !bytes.is_empty() {
            return Chunk::Data { from, bytes };
        }
        match state.info.state {
            SessionState::Running => Chunk::Pending,
            SessionState::Failed => Chunk::Ended(None),
            SessionState::Exited => Chunk::Ended(Some(ExitStatus {
                code: state.info.exit_code.unwrap_or(255),
                signal: state.info.signal,
            })),
        }
    }

    /// Waits until output was appended or the session ended since `rx` last
    /// looked.
    pub async fn changed(rx: &mut watch::Receiver<()>) {
        // The sender lives as long as the session, which the caller holds.
        let _ = rx.changed().await;
    }

    /// Waits until the session is no longer running.
    pub async fn ended(&self) {
        let mut rx = self.subscribe();
        while self.is_running() {
            Self::changed(&mut rx).await;
        }
    }

    /// Sends `signal` to the session's process group, if it still runs.
    pub fn signal(&self, signal: Signal) {
        let state = self.lock();
        if state.info.state != SessionState::Running || state.reaped {
            return;
        }
        if let Some(pgid) = state.info.pid.and_then(crate::reaper::pid) {
            let _ = rustix::process::kill_process_group(pgid, signal);
        }
    }

    /// Writes `data` to the process's stdin; input after the stdin closed
    /// is dropped.
    pub async fn write_stdin(&self, data: &[u8]) {
        let mut stdin = self.stdin.lock().await;
        if let Some(pipe) = stdin.as_mut() {
            // EPIPE: the process closed its stdin.
            if pipe.write_all(data).await.is_err() {
                *stdin = None;
            }
        }
    }

    pub async fn close_stdin(&self) {
        *self.stdin.lock().await = None;
    }

    fn append(&self, data: &[u8]) {
        self.lock().output.push(data);
        self.changes.send_replace(());
    }

    fn finish(&self, status: ExitStatus) {
        {
            let mut state = self.lock();
            state.info.state = SessionState::Exited;
            state.info.exit_code = Some(status.code);
            state.info.signal = status.signal;
            state.info.ended_at = Some(now());
        }
        self.changes.send_replace(());
    }
}

fn info(launch: Launch, state: SessionState, pid: Option<u32>) -> SessionInfo {
    SessionInfo {
        name: launch.name,
        argv: launch.argv,
        cwd: launch.cwd,
        state,
        exit_code: None,
        signal: None,
        pid,
        started_at: now(),
        ended_at: None,
        error: None,
        output_bytes: 0,
        retained_from: 0,
    }
}

/// Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64
}

/// Watches a running session's process to its end; see the module doc.
pub async fn supervise(
    session: Arc<Session>,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    exited: oneshot::Receiver<ExitStatus>,
) {
    let (exited_tx, exited_rx) = watch::channel(false);
    let wait = async {
        // A dropped sender means the reaper lost the child; report it as killed.
        let status = exited.await.unwrap_or(ExitStatus {
            code: 137,
            signal: Some(9),
        });
        session.lock().reaped = true;
        let _ = exited_tx.send(true);
        status
    };
    let (status, (), ()) = tokio::join!(
        wait,
        capture(stdout, &session, exited_rx.clone()),
        capture(stderr, &session, exited_rx),
    );
    // The stdin pipe stays until the session is forgotten: closing it here
    // could wait behind an attacher's write to a pipe nobody reads.
    session.finish(status);
    crate::console::log(format_args!(
        "session {} exited with {}",
        session.lock().info.name,
        status.code
    ));
}

/// Appends what `src` yields to the session until end of stream, or until
/// drained after the exit (exec's step 5).
async fn capture<R: AsyncRead + Unpin>(src: R, session: &Session, exited: watch::Receiver<bool>) {
    let mut drain = Drain::new(src, exited);
    while let Some(chunk) = drain.next().await {
        session.append(chunk);
    }
}
