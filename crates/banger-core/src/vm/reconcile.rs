//! Start-up reconcile: the daemon may have been killed at any moment. For
//! every recorded VM, rebuild the transient state from the OS:
//!
//! - `running` with a `handles.json` whose process is alive and really that
//!   VM's engine: adopt it (the agent session reconnects on first use);
//! - `running` otherwise: tear down what the scratch file names, record stopped;
//! - `creating`: a create that never finished; remove it entirely, as a
//!   failed create would have;
//! - `deleting`: finish the delete;
//! - `stopped`/`failed`: make sure nothing transient is left.

use crate::manager::Manager;
use crate::vm::handles;
use banger_api::VmState;
use std::path::Path;
use std::time::Duration;

impl Manager {
    pub async fn reconcile(&self) -> Result<(), crate::error::Error> {
        for vm in self.store.vms()? {
            let dir = Path::new(&vm.dir);
            let scratch = handles::read(dir);
            let alive = scratch.as_ref().filter(|h| self.engine.alive(h));
            match (vm.state, alive) {
                (VmState::Running, Some(h)) => {
                    tracing::info!(vm = %vm.name, pid = h.pid, "adopting running vm");
                    self.handles.insert(
                        &vm.name,
                        handles::Runtime {
                            handles: h.clone(),
                            agent: None,
                        },
                    );
                }
                (VmState::Creating | VmState::Deleting, h) => {
                    tracing::info!(vm = %vm.name, state = %vm.state, "removing a vm whose create or delete was interrupted");
                    if let Some(h) = h {
                        let _ = self.engine.stop(h, Duration::from_millis(500)).await;
                    }
                    self.release_runtime(&vm);
                    let _ = std::fs::remove_dir_all(&vm.dir);
                    self.store.delete_vm(&vm.name)?;
                }
                (state, h) => {
                    if let Some(h) = h {
                        // Recorded as not running but its engine lives: stop it.
                        tracing::warn!(vm = %vm.name, pid = h.pid, "stopping an engine the store says is not running");
                        let _ = self.engine.stop(h, Duration::from_secs(2)).await;
                    }
                    self.release_runtime(&vm);
                    if state == VmState::Running {
                        tracing::info!(vm = %vm.name, "engine gone while the daemon was down; recording stopped");
                        self.store.set_vm_state(&vm.name, VmState::Stopped, None)?;
                    }
                }
            }
        }
        self.reconcile_bridge();
        Ok(())
    }
}
