//! Following a guest that QEMU paused on a disk error.
//!
//! Writable drives run with `werror=stop`: a write that fails on the host
//! (ENOSPC above all) pauses the guest instead of handing it an I/O error,
//! so nothing is lost and the guest runs on once the host has room. QEMU
//! says so on its event socket (a second QMP monitor, so the control
//! socket stays free for commands): `STOP`, `BLOCK_IO_ERROR`, `RESUME`. On
//! each of those the follower asks `query-status` (`io-error` while held)
//! and `query-block` (a device whose `io-status` is `nospace` means the
//! host disk is full), and publishes the result.

use super::qmp::Qmp;
use crate::engine::{EngineError, Pause};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// The events socket beside a VM's control socket.
pub fn events_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("events.sock")
}

/// The events that can change whether the guest is held.
const EVENTS: [&str; 3] = ["STOP", "RESUME", "BLOCK_IO_ERROR"];

/// Whether the guest is held now.
async fn state(q: &mut Qmp) -> Result<Option<Pause>, EngineError> {
    let status = q.execute("query-status", Value::Null).await?;
    let block = q.execute("query-block", Value::Null).await?;
    Ok(pause_of(&status, &block))
}

/// Waits for an event that can change the state; false at end of stream.
async fn changed(q: &mut Qmp) -> Result<bool, EngineError> {
    while let Some(event) = q.next_event().await? {
        if EVENTS.contains(&event.as_str()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What `query-status` and `query-block` say about a held guest.
pub fn pause_of(status: &serde_json::Value, block: &serde_json::Value) -> Option<Pause> {
    if status["status"] != "io-error" {
        return None;
    }
    let nospace = block
        .as_array()
        .is_some_and(|ds| ds.iter().any(|d| d["io-status"] == "nospace"));
    Some(if nospace {
        Pause::DiskFull
    } else {
        Pause::IoError
    })
}

/// Publishes the guest's pause state on `tx` until the engine exits.
pub async fn follow(socket: &Path, tx: watch::Sender<Option<Pause>>) {
    if let Err(e) = follow_inner(socket, &tx).await {
        tracing::debug!(socket = %socket.display(), error = %crate::error::chain(&e), "stopped following the engine's events");
    }
}

async fn follow_inner(socket: &Path, tx: &watch::Sender<Option<Pause>>) -> Result<(), EngineError> {
    // The socket appears with the control socket; an engine from before
    // it existed has none, and is simply not followed.
    let mut monitor = None;
    for _ in 0..50 {
        match Qmp::connect(socket).await {
            Ok(m) => {
                monitor = Some(m);
                break;
            }
            Err(_) if !socket.exists() => return Ok(()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let Some(mut m) = monitor else {
        return Ok(());
    };
    loop {
        let state = state(&mut m).await?;
        tx.send_if_modified(|cur| std::mem::replace(cur, state) != state);
        if !changed(&mut m).await? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_guest_held_on_a_full_disk_is_told_from_other_io_errors_and_from_running() {
        let held = json!({"status": "io-error", "running": false});
        let full = json!([{"device": "disk0", "io-status": "ok"}, {"device": "disk1", "io-status": "nospace"}]);
        let failed = json!([{"device": "disk0", "io-status": "failed"}]);
        assert_eq!(pause_of(&held, &full), Some(Pause::DiskFull));
        assert_eq!(pause_of(&held, &failed), Some(Pause::IoError));
        assert_eq!(pause_of(&json!({"status": "running"}), &full), None);
        assert_eq!(pause_of(&json!({"status": "paused"}), &full), None);
    }
}
