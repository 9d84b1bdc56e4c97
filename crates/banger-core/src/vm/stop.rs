//! Stopping a VM: ask the agent for a clean power-off (filesystems synced
//! and unmounted in the guest), wait for the engine to exit, and kill it
//! only when that does not happen within the stop timeout. Also `restart`,
//! which is stop then start in one operation.

use crate::error::Error;
use crate::manager::Manager;
use crate::ops::Op;
use banger_api::{OperationKind, VmState};
use std::sync::Arc;
use std::time::Duration;

impl Manager {
    pub fn stop(self: &Arc<Self>, name: &str) -> Result<Arc<Op>, Error> {
        self.vm_record(name)?;
        let op = self.ops.begin(OperationKind::Stop, name);
        let (this, op2, name) = (self.clone(), op.clone(), name.to_string());
        tokio::spawn(async move {
            let result = this.run_stop(&op2, &name).await;
            op2.finish(&this.store, result.map_err(|e| e.to_api()));
        });
        Ok(op)
    }

    pub fn restart(self: &Arc<Self>, name: &str) -> Result<Arc<Op>, Error> {
        self.vm_record(name)?;
        let op = self.ops.begin(OperationKind::Restart, name);
        let (this, op2, name) = (self.clone(), op.clone(), name.to_string());
        tokio::spawn(async move {
            let mut result = this.run_stop(&op2, &name).await;
            if result.is_ok() {
                result = this.run_start(&op2, &name).await;
            }
            op2.finish(&this.store, result.map_err(|e| e.to_api()));
        });
        Ok(op)
    }

    pub(crate) async fn run_stop(&self, op: &Op, name: &str) -> Result<(), Error> {
        let lock = self.vm_lock(name);
        let _guard = lock.lock().await;
        let vm = self.refresh(self.vm_record(name)?);
        if vm.state != VmState::Running {
            if super::can_start(vm.state) {
                return Ok(()); // already stopped
            }
            return Err(Error::Conflict(format!(
                "vm {name:?} is {} and cannot be stopped now",
                vm.state
            )));
        }
        let Some(rt) = self.handles.get(name) else {
            self.store.set_vm_state(name, VmState::Stopped, None)?;
            return Ok(());
        };
        let timeout = Duration::from_secs(self.config.stop_timeout_secs);
        let graceful = op
            .stage("shutdown", "shut down guest", async {
                let agent = self.agent(name).await?;
                agent.shutdown(false).await?;
                if crate::engine::qemu::wait_gone(&rt.handles, &*self.engine, timeout).await {
                    Ok(())
                } else {
                    Err(Error::failed(format!(
                        "the guest did not power off within {} s",
                        timeout.as_secs()
                    )))
                }
            })
            .await;
        if graceful.is_err() {
            op.stage("kill", "stop engine", async {
                Ok::<_, Error>(
                    self.engine
                        .stop(&rt.handles, Duration::from_secs(2))
                        .await?,
                )
            })
            .await?;
        }
        self.release_runtime(&vm);
        self.store.set_vm_state(name, VmState::Stopped, None)?;
        Ok(())
    }
}
