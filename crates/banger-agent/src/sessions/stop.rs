//! Stopping a session: SIGTERM to its process group, SIGKILL once the grace
//! period is over, and the answer only after the process is gone. Owns that
//! escalation; the exit itself is observed by the session's supervisor.

use std::sync::Arc;
use std::time::Duration;

use banger_proto::SessionInfo;
use rustix::process::Signal;

use super::session::Session;

/// Stops `session` (a no-op if it already ended) and returns its final info.
pub async fn stop(session: Arc<Session>, grace: Duration) -> SessionInfo {
    if session.is_running() {
        session.signal(Signal::Term);
        if tokio::time::timeout(grace, session.ended()).await.is_err() {
            session.signal(Signal::Kill);
            session.ended().await;
        }
    }
    session.info()
}
