//! Guests their engine holds paused after a host disk error. A guest that
//! fills the host's disk is paused by its engine (nothing is lost, nothing
//! fails inside it); this follows each boot's pause state from the engine,
//! so the VM is shown `paused: host disk full` within a moment, requests
//! that need its agent are refused with what to do instead of hanging, and
//! a stop skips the clean power-off it cannot get. While the disk is full
//! the free space is checked every second; once there is room again the
//! guest is let run on.

use super::Lifecycle;
use crate::engine::{Engine, Handles, Pause};
use crate::error::Error;
use crate::space;
use crate::store::VmRecord;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Held guests by VM id, with their engine's pid (a report about an
/// earlier boot never sticks to a later one).
#[derive(Default)]
pub struct Held {
    map: Mutex<HashMap<String, (u32, Pause)>>,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Pause)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the engine `pid` of VM `id` holds its guest, if it does.
    pub fn get(&self, id: &str, pid: u32) -> Option<Pause> {
        self.lock()
            .get(id)
            .filter(|(p, _)| *p == pid)
            .map(|(_, why)| *why)
    }

    fn set(&self, id: &str, pid: u32, pause: Option<Pause>) {
        let mut map = self.lock();
        match pause {
            Some(why) => {
                map.insert(id.to_string(), (pid, why));
            }
            None => {
                if map.get(id).is_some_and(|(p, _)| *p == pid) {
                    map.remove(id);
                }
            }
        }
    }
}

/// Whether a guest held on a full disk may run on: the room any work
/// starts with ([`space::ROOM`]; less, and it would be held again at once).
fn has_room(state_dir: &Path) -> bool {
    space::ensure_room(state_dir, "resuming a guest").is_ok()
}

fn free_mib(state_dir: &Path) -> String {
    format!("{} MiB free", space::free_mib(state_dir))
}

impl Lifecycle {
    /// Follows one boot's pause state until its engine exits.
    pub(super) fn follow_pause(&self, vm: &VmRecord, engine: Arc<dyn Engine>, handles: Handles) {
        let (tx, mut rx) = watch::channel(None);
        let (follower, follower_handles) = (engine.clone(), handles.clone());
        tokio::spawn(async move { follower.follow_pause(&follower_handles, tx).await });
        let held = self.held.clone();
        // Held by id: a standby taken by a create changes its name.
        let (id, name, state_dir) = (vm.id.clone(), vm.name.clone(), self.dir(vm).state);
        tokio::spawn(async move {
            let mut was = None;
            loop {
                let pause = *rx.borrow_and_update();
                held.set(&id, handles.pid, pause);
                if pause != was {
                    match pause {
                        Some(why) => {
                            tracing::warn!(vm = %name, reason = why.describe(), free = free_mib(&state_dir), "the engine paused the guest")
                        }
                        None => tracing::info!(vm = %name, "the guest runs again"),
                    }
                    was = pause;
                }
                let full = pause == Some(Pause::DiskFull);
                if full && has_room(&state_dir) {
                    tracing::info!(vm = %name, free = free_mib(&state_dir), "the host has room again; resuming the guest");
                    if let Err(e) = engine.resume(&handles).await {
                        tracing::warn!(vm = %name, error = %crate::error::chain(&e), "cannot resume the guest");
                    }
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep(CHECK_EVERY), if full => {}
                }
            }
            held.set(&id, handles.pid, None);
        });
    }

    /// Why the engine holds `vm`'s guest paused, if it does.
    pub(super) fn held(&self, vm: &VmRecord) -> Option<Pause> {
        let r = self.runtime.get(&vm.name)?;
        self.held.get(&vm.id, r.handles.pid)
    }

    /// Resolves once the engine holds `vm`'s guest.
    pub(super) async fn until_held(&self, vm: &VmRecord) -> Pause {
        loop {
            if let Some(why) = self.held(vm) {
                return why;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The refusal for a request that needs the agent of a held guest.
    pub(super) fn paused_error(&self, vm: &VmRecord, why: Pause) -> Error {
        let state_dir = &self.paths.state_dir;
        let hint = match why {
            Pause::DiskFull => format!(
                "free space on the filesystem holding {} ({}), or stop or delete a vm; \
                 it runs on by itself once {} MiB are free",
                state_dir.display(),
                free_mib(state_dir),
                space::ROOM >> 20
            ),
            Pause::IoError => format!(
                "see {} for the failed write; `banger vm stop {}` or `banger vm delete {}` end it",
                self.dir(vm).engine_log().display(),
                vm.name,
                vm.name
            ),
        };
        Error::Paused {
            name: vm.name.clone(),
            reason: why.describe(),
            hint,
        }
    }
}
