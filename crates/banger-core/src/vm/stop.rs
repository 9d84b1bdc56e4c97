//! Stopping a VM: ask the agent for a clean power-off (filesystems synced
//! and unmounted in the guest), wait for the engine to exit, and kill it
//! only when that does not happen within the stop timeout; then release
//! what the boot made. Also `restart`, which is stop then start in one
//! operation.

use super::Lifecycle;
use crate::error::{Action, Error};
use crate::ops::Op;
use banger_api::{OperationKind, VmState};
use std::sync::Arc;
use std::time::Duration;

impl Lifecycle {
    pub fn stop(self: &Arc<Self>, name: &str) -> Result<Arc<Op>, Error> {
        self.record(name)?;
        let (this, name) = (self.clone(), name.to_string());
        Ok(self
            .ops
            .spawn(OperationKind::Stop, &name.clone(), |op| async move {
                this.run_stop(&op, &name).await
            }))
    }

    pub fn restart(self: &Arc<Self>, name: &str) -> Result<Arc<Op>, Error> {
        self.record(name)?;
        let (this, name) = (self.clone(), name.to_string());
        Ok(self
            .ops
            .spawn(OperationKind::Restart, &name.clone(), |op| async move {
                this.run_stop(&op, &name).await?;
                this.run_start(&op, &name).await
            }))
    }

    pub(super) async fn run_stop(&self, op: &Op, name: &str) -> Result<(), Error> {
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let vm = self.record(name)?;
        if vm.state != VmState::Running {
            if super::can_start(vm.state) {
                return Ok(()); // already stopped
            }
            return Err(Error::WrongState {
                name: name.into(),
                state: vm.state,
                action: Action::Stop,
            });
        }
        let running = self.runtime.get(name);
        let engine = running
            .as_ref()
            .and_then(|r| self.engines.get(r.engine).ok())
            .filter(|e| running.as_ref().is_some_and(|r| e.alive(&r.handles)));
        if let (Some(r), Some(engine)) = (running, engine) {
            let timeout = Duration::from_secs(self.config.stop_timeout_secs);
            // A guest held after a disk error cannot power off by itself.
            let held = self.held(&vm);
            let graceful = if let Some(why) = held {
                Err(self.paused_error(&vm, why))
            } else {
                op.stage("shutdown", "shut down guest", async {
                    let agent = self.agent(name).await?;
                    agent.shutdown(false).await?;
                    // The guest's last writes can meet a full disk: held,
                    // it will never power off.
                    tokio::select! {
                        gone = engine.wait_gone(&r.handles, timeout) => if gone {
                            Ok(())
                        } else {
                            Err(Error::PowerOffTimeout {
                                secs: timeout.as_secs(),
                            })
                        },
                        why = self.until_held(&vm) => Err(self.paused_error(&vm, why)),
                    }
                })
                .await
            };
            if graceful.is_err() {
                op.stage("kill", "stop engine", async {
                    Ok::<_, Error>(engine.stop(&r.handles, Duration::from_secs(2)).await?)
                })
                .await?;
            }
        }
        self.release_runtime(&vm);
        self.store.set_vm_state(name, VmState::Stopped, None)?;
        Ok(())
    }
}
