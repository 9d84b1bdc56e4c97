//! Start-up reconcile: the daemon may have been killed at any moment. For
//! every recorded VM, rebuild the transient state from the OS:
//!
//! - `running` with a `handles.json` whose process is alive and really that
//!   VM's engine: adopt it (the agent session reconnects on first use).
//!   The file is a claim: `runtime::read` drops one whose pid or sockets
//!   cannot be this VM's, and the engine's `alive` checks the process (its
//!   binary, uid and exact arguments) before anything is signalled;
//! - then each capability sweeps its leftovers that no adopted VM owns,
//!   and any process carrying one of this instance's VM socket paths that
//!   no adopted VM owns is killed (an engine spawned by a daemon killed
//!   before it wrote the scratch file);
//! - `running` otherwise: release what the scratch file names, record stopped;
//! - `creating`: a create that never finished; remove it entirely, as a
//!   failed create would have;
//! - `deleting`: finish the delete;
//! - `stopped`/`failed`: make sure nothing transient is left;
//! - a VM `image warm` was using, in any state: removed, with what an
//!   interrupted warm left in the warm dir;
//! - the snapshots interrupted forks left (`fork.*`): removed.

use super::Lifecycle;
use super::runtime::{self, Running};
use crate::capability::Live;
use crate::store::VmRecord;
use banger_api::VmState;
use std::time::Duration;

impl Lifecycle {
    /// Kills processes that carry a VM socket path of this instance (its
    /// runtime dir is owner-only, so nobody else's; another instance's
    /// longer path that ends the same, `/tmp/x/run/banger/vms/…` against
    /// `/run/banger/vms/`, is not this one's) but belong to no adopted VM:
    /// an engine, or a helper like passt, started by a daemon killed
    /// before it could record it.
    fn sweep_orphans(&self, adopted: &[(VmRecord, Running)]) {
        let vms_dir = self.paths.runtime_dir.join("vms");
        let mark = format!("{}/", vms_dir.display());
        let kept: Vec<String> = adopted
            .iter()
            .map(|(vm, _)| format!("{}{}/", mark, vm.id))
            .collect();
        for (pid, args) in banger_sys::process::with_path_arg(&mark) {
            if adopted.iter().any(|(_, r)| r.handles.pid == pid)
                || args.iter().any(|a| {
                    kept.iter()
                        .any(|k| banger_sys::process::names_path_in(a, k))
                })
            {
                continue;
            }
            tracing::warn!(pid, cmd = %args.join(" "), "killing a process no vm owns");
            let _ = banger_sys::process::signal(pid, banger_sys::process::Signal::Kill);
        }
    }

    pub async fn reconcile(&self) -> Result<(), crate::error::Error> {
        let vms = self.store.vms()?;
        let mut adopted: Vec<(VmRecord, Running)> = Vec::new();
        let mut dead: Vec<(VmRecord, Option<Running>, bool)> = Vec::new();
        for vm in vms {
            let scratch = runtime::read(&self.dir(&vm), &self.engines);
            let alive = scratch.as_ref().is_some_and(|r| {
                self.engines
                    .get(r.engine)
                    .is_ok_and(|e| e.alive(&r.handles))
            });
            // A VM `image warm` made is never kept past its operation, nor
            // a standby past its daemon.
            let warming =
                vm.options.contains_key(super::warm::WARMING) || Lifecycle::is_standby(&vm);
            match (vm.state, scratch) {
                (VmState::Running, Some(r)) if alive && !warming => adopted.push((vm, r)),
                (_, r) => dead.push((vm, r, alive)),
            }
        }
        for (vm, r) in &adopted {
            tracing::info!(vm = %vm.name, pid = r.handles.pid, "adopting running vm");
            // A daemon killed while taking a snapshot can leave the guest paused.
            if let Ok(engine) = self.engines.get(r.engine) {
                match engine.resume_interrupted(&r.handles).await {
                    Ok(true) => {
                        tracing::warn!(vm = %vm.name, "resumed a guest an interrupted snapshot left paused")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "cannot ask whether an interrupted snapshot left the guest paused")
                    }
                }
            }
            self.watch(vm, r);
            self.runtime.insert(&vm.name, r.clone());
        }
        let live: Vec<Live<'_>> = adopted
            .iter()
            .map(|(vm, r)| Live {
                vm,
                runtime: &r.capabilities,
            })
            .collect();
        self.capabilities.sweep(&live);
        self.sweep_orphans(&adopted);
        for (vm, scratch, alive) in dead {
            if let Some(r) = &scratch
                && let Ok(engine) = self.engines.get(r.engine)
            {
                if alive {
                    tracing::warn!(vm = %vm.name, pid = r.handles.pid, state = %vm.state, "stopping an engine the store says is not running");
                }
                // Also waits out one exiting on its own, which still holds
                // the VM's disks.
                let _ = engine.stop(&r.handles, Duration::from_millis(500)).await;
            }
            self.release_runtime(&vm);
            let state =
                if vm.options.contains_key(super::warm::WARMING) || Lifecycle::is_standby(&vm) {
                    VmState::Deleting
                } else {
                    vm.state
                };
            match state {
                VmState::Creating | VmState::Deleting => {
                    tracing::info!(vm = %vm.name, state = %vm.state, "removing a vm whose create, delete or image warm was interrupted");
                    let dir = self.dir(&vm);
                    self.capabilities.destroy(&vm, &dir);
                    let _ = dir.remove();
                    self.store.delete_vm(&vm.name)?;
                }
                // Paused is observed, never recorded.
                VmState::Running | VmState::Paused => {
                    tracing::info!(vm = %vm.name, "engine gone while the daemon was down; recording stopped");
                    self.store.set_vm_state(&vm.name, VmState::Stopped, None)?;
                }
                VmState::Stopped | VmState::Failed => {}
            }
        }
        self.sweep_warm();
        self.sweep_fork_snapshots();
        Ok(())
    }
}
