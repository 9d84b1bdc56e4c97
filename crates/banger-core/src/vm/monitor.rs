//! The monitor: the one writer of "this VM's engine is gone". Engines found
//! dead (a watcher saw the process exit, or a read noticed) are reported
//! here; the monitor takes the VM's lock, checks again, releases what the
//! boot made and records the VM stopped. Reads themselves never write.

use super::Lifecycle;
use banger_api::VmState;
use std::sync::Weak;
use tokio::sync::mpsc;

/// An engine that is gone: the VM's name and, when known, the pid it had
/// (a report about an older boot of a VM that runs again is ignored).
#[derive(Debug)]
pub struct Exited {
    pub name: String,
    pub pid: Option<u32>,
}

pub(super) fn start(lifecycle: Weak<Lifecycle>, mut rx: mpsc::UnboundedReceiver<Exited>) {
    tokio::spawn(async move {
        while let Some(exit) = rx.recv().await {
            let Some(lc) = lifecycle.upgrade() else {
                return;
            };
            lc.record_exit(exit).await;
        }
    });
}

impl Lifecycle {
    async fn record_exit(&self, exit: Exited) {
        let lock = self.lock(&exit.name);
        let _guard = lock.lock().await;
        let Ok(vm) = self.record(&exit.name) else {
            return;
        };
        if vm.state != VmState::Running {
            return;
        }
        let running = self.runtime.get(&vm.name);
        if let (Some(r), Some(pid)) = (&running, exit.pid)
            && r.handles.pid != pid
        {
            return; // a report about an earlier boot
        }
        let alive = running.as_ref().is_some_and(|r| {
            self.engines
                .get(r.engine)
                .is_ok_and(|e| e.alive(&r.handles))
        });
        if alive {
            return;
        }
        tracing::info!(vm = %vm.name, "engine is gone; recording the vm as stopped");
        self.release_runtime(&vm);
        if let Err(e) =
            self.store
                .set_vm_state(&vm.name, VmState::Stopped, vm.last_error.as_deref())
        {
            tracing::error!(vm = %vm.name, error = %crate::error::chain(&e), "cannot record the vm stopped");
        }
    }

    /// Waits until the monitor has handled every report sent so far (tests).
    #[cfg(test)]
    pub(crate) async fn settle(&self) {
        for _ in 0..200 {
            let pending = self.store.vms().unwrap_or_default().into_iter().any(|v| {
                v.state == VmState::Running
                    && !self.runtime.get(&v.name).is_some_and(|r| {
                        self.engines
                            .get(r.engine)
                            .is_ok_and(|e| e.alive(&r.handles))
                    })
            });
            if !pending {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
