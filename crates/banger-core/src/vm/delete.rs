//! Deleting a VM: stop its engine without ceremony (its disks are about to
//! go), release what its boot made, destroy what its capabilities made at
//! create, remove its directories and its record. Nothing is left behind:
//! no process, no tap, lease or DNS name, no file, no row.

use super::Lifecycle;
use crate::error::{Action, Error};
use crate::ops::Op;
use banger_api::{OperationKind, VmState};
use std::sync::Arc;

impl Lifecycle {
    pub fn delete(self: &Arc<Self>, name: &str) -> Result<Arc<Op>, Error> {
        let vm = self.record(name)?;
        if !super::can_delete(vm.state) {
            return Err(Error::WrongState {
                name: name.into(),
                state: vm.state,
                action: Action::Delete,
            });
        }
        let (this, name) = (self.clone(), name.to_string());
        Ok(self
            .ops
            .spawn(OperationKind::Delete, &name.clone(), |op| async move {
                this.run_delete(&op, &name).await
            }))
    }

    pub(super) async fn run_delete(&self, op: &Op, name: &str) -> Result<(), Error> {
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        self.delete_locked(op, name).await
    }

    /// [`Lifecycle::run_delete`] for a caller holding the VM's lock.
    pub(super) async fn delete_locked(&self, op: &Op, name: &str) -> Result<(), Error> {
        // Two deletes of one name both pass the check in `delete`; the
        // second finds the row gone once it gets the lock.
        let vm = self.store.vm(name)?.ok_or_else(|| Error::Refused {
            what: format!("vm {name:?} was deleted by another request while this one waited"),
            hint: "nothing is left to delete".into(),
        })?;
        self.store
            .set_vm_state(name, VmState::Deleting, vm.last_error.as_deref())?;
        let dir = self.dir(&vm);
        let running = self
            .runtime
            .get(name)
            .or_else(|| super::runtime::read(&dir, &self.engines));
        let engine = running
            .as_ref()
            .and_then(|r| Some((self.engines.get(r.engine).ok()?, &r.handles)))
            .filter(|(engine, handles)| engine.alive(handles));
        let mut gone = None;
        if let Some((engine, handles)) = &engine {
            gone = Some(
                op.stage("stop", "stop engine", async {
                    Ok::<_, Error>(engine.kill(handles).await?)
                })
                .await?,
            );
        }
        // The files go while the kernel tears the engine down; the record
        // goes only once it is gone, so a delete that returned left no
        // process behind.
        op.stage("files", "remove disks and sockets", async {
            self.release_runtime(&vm);
            self.capabilities.destroy(&vm, &dir);
            let removed = dir
                .remove()
                .map_err(Error::io(format!("cannot remove {}", dir.state.display())));
            if let Some(gone) = gone {
                gone.await;
            }
            removed
        })
        .await?;
        self.store.delete_vm(name)?;
        Ok(())
    }
}
