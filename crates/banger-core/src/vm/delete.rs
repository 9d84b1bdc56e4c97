//! Deleting a VM: stop its engine without ceremony (its disks are about to
//! go), remove its directories and its record. Nothing is left behind: no
//! process, no file under the state or runtime dirs, no row.

use crate::error::Error;
use crate::manager::Manager;
use crate::ops::Op;
use banger_api::{OperationKind, VmState};
use std::sync::Arc;
use std::time::Duration;

impl Manager {
    pub fn delete(self: &Arc<Self>, name: &str) -> Result<Arc<Op>, Error> {
        let vm = self.vm_record(name)?;
        if !super::can_delete(vm.state) {
            return Err(Error::Conflict(format!(
                "vm {name:?} is still being created; wait for it, then delete it"
            )));
        }
        let op = self.ops.begin(OperationKind::Delete, name);
        let (this, op2, name) = (self.clone(), op.clone(), name.to_string());
        tokio::spawn(async move {
            let result = this.run_delete(&op2, &name).await;
            op2.finish(&this.store, result.map_err(|e| e.to_api()));
        });
        Ok(op)
    }

    async fn run_delete(&self, op: &Op, name: &str) -> Result<(), Error> {
        let lock = self.vm_lock(name);
        let _guard = lock.lock().await;
        let vm = self.vm_record(name)?;
        self.store
            .set_vm_state(name, VmState::Deleting, vm.last_error.as_deref())?;
        let handles = self
            .handles
            .get(name)
            .map(|rt| rt.handles)
            .or_else(|| super::handles::read(std::path::Path::new(&vm.dir)));
        if let Some(h) = handles.filter(|h| self.engine.alive(h)) {
            op.stage("stop", "stop engine", async {
                Ok::<_, Error>(self.engine.stop(&h, Duration::from_secs(2)).await?)
            })
            .await?;
        }
        op.stage("files", "remove disks and sockets", async {
            self.release_runtime(&vm);
            match std::fs::remove_dir_all(&vm.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
                    context: format!("cannot remove {}", vm.dir),
                    source: e,
                }),
                _ => Ok(()),
            }
        })
        .await?;
        self.store.delete_vm(name)?;
        Ok(())
    }
}
