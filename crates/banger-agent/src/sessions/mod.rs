//! Guest sessions: processes the agent keeps for the guest's whole life,
//! tied to no host connection or stream, so they outlive a daemon restart
//! (which brings a new connection) and any client that detaches. Owns the
//! agent-wide registry and routing a `session` request to its action; the
//! wire shapes are `banger_proto::session`'s, which walks through each
//! action's stream.
//!
//! - `start.rs`: name check, preflight, spawn (as exec spawns).
//! - `session.rs`: one session's state, output and stdin, and the task that
//!   follows its process to the end.
//! - `scrollback.rs`: the bounded output buffer ([`SCROLLBACK_BYTES`]).
//! - `follow.rs`: `attach` and `logs`.
//! - `stop.rs`: SIGTERM, then SIGKILL.
//!
//! Bounds: each session keeps at most its scrollback of output in memory;
//! at most [`KEEP_ENDED`] ended sessions are remembered (the oldest ended
//! one is forgotten first), so neither output nor history grows without
//! limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use banger_proto::session::DEFAULT_STOP_GRACE_SECS;
use banger_proto::{Frame, FrameKind, SessionInfo, SessionRequest};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::Agent;
use crate::console::chain;
use crate::spawn::SpawnError;

mod follow;
mod scrollback;
mod session;
mod start;
mod stop;

pub use scrollback::SCROLLBACK_BYTES;
pub use start::PreflightError;

/// How many ended (exited or failed) sessions are remembered.
pub const KEEP_ENDED: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session name {name:?} is not 1-63 characters of a-z, 0-9, '.', '_', '-'")]
    BadName { name: String },
    #[error("argv is empty")]
    EmptyArgv,
    #[error("session {name} is already running: stop it first or pick another name")]
    Running { name: String },
    #[error("no session named {name}")]
    NotFound { name: String },
    /// The message is the preflight's own: it names what is missing.
    #[error(transparent)]
    Preflight { source: PreflightError },
    #[error("session {name} could not start")]
    Spawn {
        name: String,
        #[source]
        source: SpawnError,
    },
}

impl SessionError {
    /// The [`banger_proto::ErrorBody`] code.
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::BadName { .. } | SessionError::EmptyArgv => "bad_request",
            SessionError::Running { .. } => "conflict",
            SessionError::NotFound { .. } => "not_found",
            SessionError::Preflight { .. } => "preflight_failed",
            SessionError::Spawn { .. } => "spawn_failed",
        }
    }
}

/// The agent's sessions, shared by every host connection.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<session::Session>>>,
    /// Bytes of output each session keeps.
    scrollback: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(SCROLLBACK_BYTES)
    }
}

impl Sessions {
    /// A registry whose sessions keep `scrollback` bytes of output each.
    pub fn new(scrollback: usize) -> Self {
        Sessions {
            map: Mutex::default(),
            scrollback,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<session::Session>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, name: &str) -> Result<Arc<session::Session>, SessionError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| SessionError::NotFound { name: name.into() })
    }

    /// Every session, oldest start first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|s| s.born());
        all.iter().map(|s| s.info()).collect()
    }

    /// Adds (or replaces, by name) `session`, then forgets the oldest ended
    /// sessions beyond [`KEEP_ENDED`].
    fn insert(
        &self,
        map: &mut HashMap<String, Arc<session::Session>>,
        session: Arc<session::Session>,
    ) {
        map.insert(session.info().name, session);
        let mut ended: Vec<_> = map
            .values()
            .filter(|s| !s.is_running())
            .map(|s| (s.info().ended_at, s.born(), s.info().name))
            .collect();
        if ended.len() > KEEP_ENDED {
            ended.sort();
            for (_, _, name) in &ended[..ended.len() - KEEP_ENDED] {
                map.remove(name);
            }
        }
    }
}

/// Serves one `session` request; `input` and `output` are the two halves
/// of its stream, positioned after the request frame.
pub async fn run<R, W>(agent: &Agent, req: SessionRequest, input: R, mut output: W)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let sessions = &agent.sessions;
    let result = match req {
        SessionRequest::Start {
            name,
            argv,
            cwd,
            env,
        } => match start::start(
            agent,
            start::StartRequest {
                name,
                argv,
                cwd,
                env,
            },
        ) {
            Ok(info) => respond(&mut output, &info).await,
            Err(e) => Err(e),
        },
        SessionRequest::List => respond(&mut output, &sessions.list()).await,
        SessionRequest::Attach { name, from } => match sessions.get(&name) {
            Ok(session) => {
                follow::attach(session, from, input, output).await;
                return;
            }
            Err(e) => Err(e),
        },
        SessionRequest::Logs { name, follow, from } => match sessions.get(&name) {
            Ok(session) => {
                follow::logs(session, from, follow, input, output).await;
                return;
            }
            Err(e) => Err(e),
        },
        SessionRequest::Stop { name, grace_secs } => match sessions.get(&name) {
            Ok(session) => {
                let grace = grace_secs.unwrap_or(DEFAULT_STOP_GRACE_SECS);
                let info = stop::stop(session, Duration::from_secs(grace.into())).await;
                respond(&mut output, &info).await
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        let _ = crate::channel::write_error(&mut output, e.code(), chain(&e)).await;
        let _ = output.shutdown().await;
    }
}

/// Writes one `Response` frame and closes the stream; a host that went
/// away meanwhile is no error of the request's.
async fn respond<W, T>(output: &mut W, body: &T) -> Result<(), SessionError>
where
    W: AsyncWrite + Unpin,
    T: serde::Serialize,
{
    let _ = banger_proto::write_frame(output, &Frame::json(FrameKind::Response, body)).await;
    let _ = output.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests;
