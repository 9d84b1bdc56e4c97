//! `vm fork VM --count N [--prefix P]`: N new running VMs, each a copy of
//! a running VM as it is now. As an operation on the source VM:
//!
//! 1. before it begins, the N new VMs planned with the source's machine
//!    and recorded `creating` (names `P-1` … `P-N`, all free, or nothing
//!    is done);
//! 2. the snapshot stages (`layers`, `memory`, `save`) under a name no
//!    user can give (`fork.<hex>`: user names have no dot);
//! 3. `forks`: one create operation per fork from that snapshot
//!    (`clone.rs`), all at once, their RAM the snapshot's file mapped
//!    privately, so the forks share the pages none of them changed;
//! 4. `forget`: the snapshot removed (the forks hold links to its files),
//!    whatever happened before.
//!
//! A fork that fails is undone like a failed create, and the operation
//! fails naming it and the forks that were made. A daemon killed on the
//! way leaves `creating` rows (reconcile removes them) and perhaps the
//! `fork.*` snapshot, which reconcile removes too: no fork runs then.

use super::Lifecycle;
use super::clone::Source;
use crate::error::Error;
use crate::ops::Op;
use crate::store::VmRecord;
use banger_api::{CreateVm, ForkVm, MAX_FORKS, OperationKind};
use std::sync::Arc;

/// What a fork's own snapshot's name starts with.
pub const FORK_SNAPSHOT: &str = "fork.";

impl Lifecycle {
    /// `vm fork`: validates, records the forks and begins the operation.
    pub fn fork(self: &Arc<Self>, name: &str, req: ForkVm) -> Result<Arc<Op>, Error> {
        let source = self.running_record(name)?;
        if !(1..=MAX_FORKS).contains(&req.count) {
            return Err(Error::invalid(
                "--count",
                format!("{} is not 1 to {MAX_FORKS}", req.count),
            ));
        }
        let prefix = req.prefix.unwrap_or_else(|| format!("{name}-fork"));
        let mut vms = Vec::new();
        for i in 1..=req.count {
            let req = CreateVm {
                name: Some(format!("{prefix}-{i}")),
                ..Default::default()
            };
            vms.push(self.plan_vm(&super::clone::same_machine(&source, req))?);
        }
        // The snapshot's RAM goes to the disk first.
        let need = crate::space::ROOM + (source.memory_mib << 20);
        crate::space::ensure(&self.paths.state_dir, need, "forking a vm")?;
        for (i, vm) in vms.iter().enumerate() {
            if let Err(e) = self.store.insert_vm(vm) {
                for made in &vms[..i] {
                    let _ = self.store.delete_vm(&made.name);
                }
                return Err(e.into());
            }
        }
        let (this, name) = (self.clone(), name.to_string());
        Ok(self
            .ops
            .spawn(OperationKind::Fork, &name.clone(), |op| async move {
                this.run_fork(&op, &name, vms)
                    .await
                    .map_err(|e| crate::space::explain(e, &this.paths.state_dir, "forking a vm"))
            }))
    }

    async fn run_fork(
        self: &Arc<Self>,
        op: &Op,
        name: &str,
        vms: Vec<VmRecord>,
    ) -> Result<(), Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let snap = format!("{FORK_SNAPSHOT}{nanos:x}");
        if let Err(e) = self.run_snapshot(op, name, &snap, false).await {
            for vm in &vms {
                let _ = self.store.delete_vm(&vm.name);
            }
            return Err(e);
        }
        let made = op
            .stage("forks", &format!("create {} forks", vms.len()), async {
                let children: Vec<Arc<Op>> = vms
                    .into_iter()
                    .map(|vm| {
                        let (this, src, snap) = (self.clone(), name.to_string(), snap.clone());
                        self.ops
                            .spawn(OperationKind::Create, &vm.name.clone(), |cop| async move {
                                let lock = this.lock(&vm.name);
                                let _guard = lock.lock().await;
                                let source = Source::Snapshot {
                                    vm: src,
                                    name: snap,
                                };
                                this.run_create_from(&cop, &vm, source).await
                            })
                    })
                    .collect();
                let mut made = Vec::new();
                let mut failed = Vec::new();
                for child in children {
                    let done = child.wait().await;
                    match done.error {
                        None => made.push(done.target),
                        Some(e) => failed.push(format!("{}: {}", done.target, e.message)),
                    }
                }
                if failed.is_empty() {
                    Ok(made)
                } else {
                    Err(Error::Refused {
                        what: format!(
                            "{} of {} forks failed ({})",
                            failed.len(),
                            failed.len() + made.len(),
                            failed.join("; ")
                        ),
                        hint: if made.is_empty() {
                            "nothing was made".into()
                        } else {
                            format!("made: {}", made.join(", "))
                        },
                    })
                }
            })
            .await;
        let forgot = op
            .stage("forget", "remove the fork's snapshot", async {
                let lock = self.lock(name);
                let _guard = lock.lock().await;
                self.remove_snapshot(name, &snap)
            })
            .await;
        made?;
        forgot
    }

    /// At daemon start (no fork runs): the snapshots interrupted forks left.
    pub(super) fn sweep_fork_snapshots(&self) {
        let Ok(vms) = self.store.vms() else { return };
        for vm in vms {
            let dir = self.dir(&vm);
            if let Err(e) = self.sweep_snapshots(&vm, &dir) {
                tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "cannot reconcile the vm's snapshots");
                continue;
            }
            for snap in self.store.snapshots(&vm.id).unwrap_or_default() {
                if snap.name.starts_with(FORK_SNAPSHOT) {
                    match self.remove_snapshot(&vm.name, &snap.name) {
                        Ok(()) => {
                            tracing::info!(vm = %vm.name, snapshot = %snap.name, "removed the snapshot an interrupted fork left")
                        }
                        Err(e) => {
                            tracing::warn!(vm = %vm.name, snapshot = %snap.name, error = %crate::error::chain(&e), "cannot remove the snapshot an interrupted fork left")
                        }
                    }
                }
            }
        }
    }
}
