//! Starting a stopped VM, and the boot sequence create shares with it:
//! config drive → accelerator → engine → agent. A failed boot kills what it
//! started; the caller decides what else to undo.

use crate::agent::AgentConn;
use crate::engine::Handles;
use crate::error::Error;
use crate::manager::Manager;
use crate::ops::Op;
use crate::store::{ImageRecord, VmRecord};
use banger_api::{OperationKind, VmState};
use banger_proto::GuestConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Manager {
    /// `vm start`: begins the operation and returns it at once.
    pub fn start(self: &Arc<Self>, name: &str) -> Result<Arc<Op>, Error> {
        let vm = self.refresh(self.vm_record(name)?);
        if !super::can_start(vm.state) && vm.state != VmState::Running {
            return Err(Error::Conflict(format!(
                "vm {name:?} is {} and cannot be started now",
                vm.state
            )));
        }
        let op = self.ops.begin(OperationKind::Start, name);
        let (this, op2) = (self.clone(), op.clone());
        tokio::spawn(async move {
            let result = this.run_start(&op2, &vm.name).await;
            op2.finish(&this.store, result.map_err(|e| e.to_api()));
        });
        Ok(op)
    }

    pub(crate) async fn run_start(&self, op: &Op, name: &str) -> Result<(), Error> {
        let lock = self.vm_lock(name);
        let _guard = lock.lock().await;
        let vm = self.refresh(self.vm_record(name)?);
        if vm.state == VmState::Running {
            return Ok(());
        }
        if !super::can_start(vm.state) {
            return Err(Error::Conflict(format!(
                "vm {name:?} is {} and cannot be started now",
                vm.state
            )));
        }
        let image = self.image_record(&vm.image)?;
        match self.boot(op, &vm, &image).await {
            Ok(()) => {
                self.store.set_vm_state(name, VmState::Running, None)?;
                Ok(())
            }
            Err(e) => {
                let msg = crate::error::chain(&e);
                self.store.set_vm_state(name, VmState::Failed, Some(&msg))?;
                Err(e)
            }
        }
    }

    /// Boots `vm` (its disks already exist) and waits for its agent.
    pub(crate) async fn boot(
        &self,
        op: &Op,
        vm: &VmRecord,
        image: &ImageRecord,
    ) -> Result<(), Error> {
        let dir = Path::new(&vm.dir);
        op.stage("config", "write guest config", async {
            let (_, public_key) = crate::ssh::ensure_key(
                &*self.runner,
                &self.paths.state_dir,
                self.config.ssh_key.as_deref(),
            )?;
            let cfg = GuestConfig {
                network: self.guest_network(vm),
                version: 1,
                vm_name: vm.name.clone(),
                hostname: vm.name.clone(),
                authorized_keys: vec![public_key],
            };
            crate::disks::write_config_drive(&cfg, &dir.join("config.img"))
                .map_err(|e| Error::failed(crate::error::chain(&e)))
        })
        .await?;
        let probe_kernel = self
            .machine_spec(vm, image, crate::engine::Accel::Tcg, None)?
            .kernel;
        let (accel, _) = if self.accel_needs_probe(&probe_kernel).await {
            op.stage("accel", "probe /dev/kvm", async {
                Ok::<_, Error>(self.accel(&probe_kernel).await)
            })
            .await?
        } else {
            self.accel(&probe_kernel).await
        };
        let tap = self.acquire_tap(op, vm).await?;
        let spec = match self.machine_spec(vm, image, accel, tap.as_deref()) {
            Ok(spec) => spec,
            Err(e) => {
                self.release_tap(vm, tap);
                return Err(e);
            }
        };
        let spawned = op
            .stage("engine", "start engine", async {
                Ok::<_, Error>(self.engine.spawn(&spec).await?)
            })
            .await;
        let handles = match spawned {
            Ok(h) => h,
            Err(e) => {
                self.release_tap(vm, tap);
                return Err(e);
            }
        };
        if let Err(e) = self.remember_runtime(vm, &handles, None) {
            self.kill_engine(vm, &handles).await;
            return Err(e);
        }
        let agent = op
            .stage("agent", "wait for agent", self.wait_for_agent(vm, &handles))
            .await;
        match agent {
            Ok(conn) => {
                self.handles.set_agent(&vm.name, Arc::new(conn));
                Ok(())
            }
            Err(e) => {
                self.kill_engine(vm, &handles).await;
                Err(e)
            }
        }
    }

    /// Connects to the agent, retrying until it answers, the engine dies, or
    /// the boot timeout passes; errors carry the last console lines.
    async fn wait_for_agent(&self, vm: &VmRecord, handles: &Handles) -> Result<AgentConn, Error> {
        let timeout = Duration::from_secs(self.config.boot_timeout_secs);
        let deadline = Instant::now() + timeout;
        let connect = async {
            loop {
                match self.engine.connect_agent(handles).await {
                    Ok(io) => match AgentConn::handshake(io).await {
                        Ok(conn) => {
                            conn.health().await?;
                            return Ok::<_, Error>(conn);
                        }
                        Err(crate::agent::AgentError::ProtocolMismatch { agent, ours }) => {
                            return Err(
                                crate::agent::AgentError::ProtocolMismatch { agent, ours }.into()
                            );
                        }
                        Err(e) => {
                            tracing::debug!(vm = %vm.name, error = %e, "agent handshake failed; retrying")
                        }
                    },
                    Err(e) => {
                        tracing::debug!(vm = %vm.name, error = %e, "agent socket not ready; retrying")
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let died = async {
            while self.engine.alive(handles) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), connect) => match r {
                Ok(r) => r,
                Err(_) => Err(Error::failed(format!(
                    "the guest agent did not answer within {} s; last console lines: {}",
                    timeout.as_secs(),
                    self.console_tail(vm, 10)
                ))),
            },
            _ = died => {
                // Give the console file a moment to receive the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(Error::failed(format!(
                    "the guest did not come up: the engine exited during boot; last console lines: {}{}",
                    self.console_tail(vm, 10),
                    engine_log_hint(vm)
                )))
            }
        }
    }

    /// Stops an engine without ceremony and forgets its runtime.
    pub(crate) async fn kill_engine(&self, vm: &VmRecord, handles: &Handles) {
        if let Err(e) = self.engine.stop(handles, Duration::from_millis(500)).await {
            tracing::warn!(vm = %vm.name, error = %e, "cannot stop engine");
        }
        self.release_runtime(vm);
    }
}

fn engine_log_hint(vm: &VmRecord) -> String {
    let t = crate::engine::qemu::tail(&Path::new(&vm.dir).join("engine.log"), 3);
    if t.is_empty() {
        String::new()
    } else {
        format!("; engine said: {t}")
    }
}
