//! VMs that live as long as the process that asked for them (`vm run
//! --rm`). The CLI deletes its VM when the command ends, but a CLI killed
//! first (Ctrl-C during the boot, a harness's timeout, a closed terminal)
//! would leave it running for good. So a create may ask to be tied to its
//! caller: the daemon takes the process from the connection (`SO_PEERCRED`,
//! not from anything the request says), and once the create has finished
//! (at once if it failed: that left nothing) it records the process (pid and
//! start time: a pid alone is reused) as the VM's `caller` option and waits
//! on a pidfd. When that process has ended, the VM is deleted, unless it is
//! gone already or its name is now another VM's. A restarted daemon finds
//! the option at start-up and waits again, or deletes at once when the
//! process ended while no daemon watched.
//!
//! `vm create` (and `vm run` without `--rm`) ties more loosely: a caller
//! that ends before the create has finished (Ctrl-C during the boot) takes
//! the VM with it, once the create is done; a VM that came up stays.
//! Either way a caller gone during the create cancels the image build a
//! create may run first (the image's first use).

use super::Lifecycle;
use crate::error::Error;
use crate::ops::Op;
use banger_api::{CreateVm, OperationState, VmState};
use banger_sys::process::ProcessRef;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The option that names a VM's caller.
pub const CALLER: &str = "caller";

/// How long a VM stays tied to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tie {
    /// `vm run --rm`: deleted whenever the caller ends.
    UntilDeleted,
    /// `vm create`: deleted if the caller ends before the create does.
    WhileCreating,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    pid: u32,
    start: u64,
}

impl From<ProcessRef> for Recorded {
    fn from(p: ProcessRef) -> Recorded {
        Recorded {
            pid: p.pid,
            start: p.start,
        }
    }
}

impl From<Recorded> for ProcessRef {
    fn from(r: Recorded) -> ProcessRef {
        ProcessRef {
            pid: r.pid,
            start: r.start,
        }
    }
}

impl Lifecycle {
    /// `vm create` for `caller` (the process on the other end of the
    /// request's connection, when known): with `delete_with_caller`, the VM
    /// is deleted once that process has ended.
    pub fn create_for(
        self: &Arc<Self>,
        req: CreateVm,
        caller: Option<u32>,
    ) -> Result<Arc<Op>, Error> {
        let tie = match (req.delete_with_caller, req.cancel_with_caller) {
            (true, _) => Some(Tie::UntilDeleted),
            (false, true) => Some(Tie::WhileCreating),
            (false, false) => None,
        };
        let caller = tie.and_then(|tie| match caller.and_then(ProcessRef::of) {
            Some(process) => Some((process, tie)),
            // A peer in a pid namespace this daemon cannot see shows as
            // pid 0: the create goes ahead, untied (the CLI still deletes
            // what it made when it ends normally).
            None => {
                tracing::warn!(
                    pid = caller.unwrap_or(0),
                    "cannot tell which process asked for this vm: it is not tied to it"
                );
                None
            }
        });
        let op = self.create(req)?;
        if let Some((caller, tie)) = caller {
            let (this, op) = (self.clone(), op.clone());
            tokio::spawn(async move { this.tie_to_caller(&op, caller, tie).await });
        }
        Ok(op)
    }

    async fn tie_to_caller(self: &Arc<Self>, op: &Op, caller: ProcessRef, tie: Tie) {
        // Biased: a create that has finished counts as finished first,
        // however late this task looks (its caller exits right after).
        let left_first = tokio::select! {
            biased;
            _ = op.wait() => false,
            _ = ended(caller) => true,
        };
        if left_first {
            // An image the create is building first (on first use) is
            // not finished for nobody: its programs stop and the create
            // fails. A boot under way runs on; the VM goes after it.
            op.cancel();
        }
        let done = op.wait().await;
        if done.state != OperationState::Succeeded {
            // A failed create left nothing.
            return;
        }
        let Ok(Some(vm)) = self.store.vm(&done.target) else {
            return;
        };
        if tie == Tie::WhileCreating {
            if left_first {
                self.delete_after(&vm.name, &vm.id, caller).await;
            }
            return;
        }
        if let Err(e) = self.record_caller(&vm.id, caller) {
            tracing::warn!(
                vm = %vm.name, error = %crate::error::chain(&e),
                "cannot record the vm's caller; it is still deleted when the caller ends, unless this daemon restarts first"
            );
        }
        self.delete_after(&vm.name, &vm.id, caller).await;
    }

    /// Records `caller` as VM `vm_id`'s, for a restarted daemon.
    fn record_caller(&self, vm_id: &str, caller: ProcessRef) -> Result<(), Error> {
        let recorded = serde_json::to_value(Recorded::from(caller)).expect("two numbers");
        self.store.set_vm_option(vm_id, CALLER, &recorded)?;
        Ok(())
    }

    /// Ties the existing VM `name` to `caller` (`vm run --rm --name` of a
    /// VM that was there already): deleted once that process has ended.
    pub fn tie(self: &Arc<Self>, name: &str, caller: Option<u32>) -> Result<(), Error> {
        let vm = self.record(name)?;
        let Some(caller) = caller.and_then(ProcessRef::of) else {
            tracing::warn!(vm = %name, "cannot tell which process asked: the vm is not tied to it");
            return Ok(());
        };
        self.record_caller(&vm.id, caller)?;
        let this = self.clone();
        tokio::spawn(async move { this.delete_after(&vm.name, &vm.id, caller).await });
        Ok(())
    }

    /// At start-up, after reconcile: waits again on the callers of the VMs
    /// that have one, and deletes those whose caller ended meanwhile.
    pub fn watch_callers(self: &Arc<Self>) -> Result<(), Error> {
        for vm in self.store.vms()? {
            let Some(value) = vm.options.get(CALLER) else {
                continue;
            };
            let Ok(recorded) = serde_json::from_value::<Recorded>(value.clone()) else {
                tracing::warn!(vm = %vm.name, "ignoring an unreadable caller record");
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move { this.delete_after(&vm.name, &vm.id, recorded.into()).await });
        }
        Ok(())
    }

    /// Deletes VM `name` (while it is still the one whose id is `id`) once
    /// `caller` has ended.
    async fn delete_after(self: &Arc<Self>, name: &str, id: &str, caller: ProcessRef) {
        ended(caller).await;
        let vm = match self.store.vm(name) {
            Ok(Some(vm)) if vm.id == id && vm.state != VmState::Deleting => vm,
            _ => return,
        };
        tracing::info!(
            vm = %vm.name, pid = caller.pid,
            "deleting the vm: the process it was made for has ended"
        );
        if let Err(e) = self.delete(&vm.name) {
            tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "cannot delete the vm its caller left");
        }
    }
}

/// Resolves once `process` has ended: its pidfd turns readable. Without a
/// pidfd (a kernel before 5.3), checks once a second.
async fn ended(process: ProcessRef) {
    match process.pidfd() {
        Ok(None) => {}
        // Deprecated for an arbitrary `T: AsRawFd`, whose fd may change or
        // be closed behind tokio's back; an `OwnedFd` we own and never swap
        // upholds the contract of `AsyncFd::register`.
        #[allow(deprecated)]
        Ok(Some(fd)) => match tokio::io::unix::AsyncFd::new(fd) {
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(_) => poll_until_gone(process).await,
        },
        Err(_) => poll_until_gone(process).await,
    }
}

async fn poll_until_gone(process: ProcessRef) {
    while process.alive() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ended_resolves_when_the_process_exits_and_at_once_for_one_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = ProcessRef::of(child.id()).unwrap();
        let waiting = tokio::spawn(ended(me));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "the process still runs");
        child.kill().unwrap();
        // Another test in this binary may reap it first (ECHILD): gone either way.
        let _ = child.wait();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("ended once it exited")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), ended(me))
            .await
            .expect("a process gone already has ended");
    }

    #[tokio::test]
    async fn a_vm_tied_to_its_caller_goes_when_the_caller_ends() {
        let h = crate::testing::Harness::new();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let req = |name: &str| CreateVm {
            name: Some(name.into()),
            network: Some(banger_api::NetworkMode::None),
            delete_with_caller: true,
            ..Default::default()
        };
        let op = h
            .services
            .vms
            .create_for(req("tied"), Some(child.id()))
            .unwrap();
        assert_eq!(op.wait().await.state, OperationState::Succeeded);
        let recorded = || {
            h.store
                .vm("tied")
                .unwrap()
                .map(|v| v.options.contains_key(CALLER))
        };
        let t0 = std::time::Instant::now();
        while recorded() != Some(true) {
            assert!(t0.elapsed() < Duration::from_secs(10), "no caller recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A caller the daemon cannot see (pid 0): created, not tied.
        let op = h.services.vms.create_for(req("loose"), Some(0)).unwrap();
        assert_eq!(op.wait().await.state, OperationState::Succeeded);
        assert_eq!(
            h.store
                .vm("loose")
                .unwrap()
                .map(|v| v.options.contains_key(CALLER)),
            Some(false)
        );
        child.kill().unwrap();
        let _ = child.wait();
        while h.store.vm("tied").unwrap().is_some() {
            assert!(t0.elapsed() < Duration::from_secs(20), "the tied vm stayed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            h.store.vm("loose").unwrap().is_some(),
            "the untied one stays"
        );
    }

    #[test]
    fn the_record_round_trips() {
        let p = ProcessRef { pid: 7, start: 99 };
        let v = serde_json::to_value(Recorded::from(p)).unwrap();
        let back: Recorded = serde_json::from_value(v).unwrap();
        assert_eq!(ProcessRef::from(back), p);
    }
}
