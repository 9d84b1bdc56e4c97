//! Starting a stopped (or failed) VM: boot it with an undo stack. A failed
//! boot unwinds what it made and records the VM failed with the reason.

use super::Lifecycle;
use super::undo::Undo;
use crate::engine::RamMapping;
use crate::error::{Action, Error};
use crate::ops::Op;
use crate::store::{ImageRecord, VmRecord};
use banger_api::{OperationKind, VmState};
use std::path::Path;
use std::sync::Arc;

impl Lifecycle {
    /// `vm start`: begins the operation and returns it at once.
    pub fn start(self: &Arc<Self>, name: &str) -> Result<Arc<Op>, Error> {
        let vm = self.show(name)?;
        if !super::can_start(vm.state) && vm.state != VmState::Running {
            return Err(Error::WrongState {
                name: name.into(),
                state: vm.state,
                action: Action::Start,
            });
        }
        if vm.state != VmState::Running {
            crate::space::ensure_room(&self.paths.state_dir, "starting a vm")?;
        }
        let (this, name) = (self.clone(), name.to_string());
        Ok(self
            .ops
            .spawn(OperationKind::Start, &name.clone(), |op| async move {
                this.run_start(&op, &name).await
            }))
    }

    pub(super) async fn run_start(&self, op: &Op, name: &str) -> Result<(), Error> {
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let vm = self.record(name)?;
        let state = self.show(name)?.state;
        if state == VmState::Running {
            return Ok(());
        }
        if vm.state == VmState::Running {
            // Recorded running, engine gone: what the monitor would do.
            self.release_runtime(&vm);
            self.store.set_vm_state(name, VmState::Stopped, None)?;
        }
        if !super::can_start(state) {
            return Err(Error::WrongState {
                name: name.into(),
                state,
                action: Action::Start,
            });
        }
        let image = self.images.record(&vm.image)?;
        self.boot_recorded(op, &vm, &image, None).await
    }

    /// Boots the recorded `vm` (or, with `from`, restores it) and records
    /// the outcome: running, or failed with why, what the boot made undone.
    pub(super) async fn boot_recorded(
        &self,
        op: &Op,
        vm: &VmRecord,
        image: &ImageRecord,
        from: Option<(&Path, RamMapping)>,
    ) -> Result<(), Error> {
        let mut undo = Undo::new();
        match self.boot_from(op, vm, image, &mut undo, from).await {
            Ok(()) => {
                drop(undo);
                self.store.set_vm_state(&vm.name, VmState::Running, None)?;
                Ok(())
            }
            Err(e) => {
                undo.unwind().await;
                let msg = crate::error::chain(&e);
                self.store
                    .set_vm_state(&vm.name, VmState::Failed, Some(&msg))?;
                Err(e)
            }
        }
    }
}
