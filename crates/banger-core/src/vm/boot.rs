//! The boot sequence create and start share. In order, each a stage:
//!
//! 1. every capability's `prepare` (host resources, drives, NICs, guest
//!    config), each pushing its `release` on the undo stack (one stage);
//! 2. the config drive with the guest config;
//! 3. the accelerator (a probe boot the first time, when `auto` needs one);
//! 4. the engine, from the machine spec (root disk, the capabilities'
//!    drives, the config drive); undo: stop it;
//! 5. the runtime remembered (memory and `handles.json`); undo: forget it;
//! 6. the guest agent answering its health check, then (restores only,
//!    stage `identity`) every capability's `restored`, then every
//!    capability's `ready`.
//!
//! A failure anywhere leaves the undo stack to the caller, which unwinds it.
//!
//! Restore ([`Lifecycle::boot_from`] with a snapshot) is the same sequence
//! with the engine restored from the snapshot instead of booted: the host
//! side is made afresh, the guest resumes where the snapshot left it.

use super::Lifecycle;
use super::runtime::Running;
use super::undo::Undo;
use crate::agent::AgentConn;
use crate::capability::{BootPlan, Ctx};
use crate::engine::{Drive, DriveFormat, Engine, Handles, MachineSpec, RamMapping};
use crate::error::Error;
use crate::ops::Op;
use crate::store::{ImageRecord, VmRecord};
use banger_proto::GuestConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Lifecycle {
    /// Boots `vm` (its disks already exist) and waits for its agent; what it
    /// made is on `undo` when it fails.
    pub(super) async fn boot<'a>(
        &'a self,
        op: &Op,
        vm: &'a VmRecord,
        image: &ImageRecord,
        undo: &mut Undo<'a>,
    ) -> Result<(), Error> {
        self.boot_from(op, vm, image, undo, None).await
    }

    /// [`Lifecycle::boot`], or with `from` (a snapshot directory and how to
    /// map its RAM) a restore of that snapshot.
    pub(super) async fn boot_from<'a>(
        &'a self,
        op: &Op,
        vm: &'a VmRecord,
        image: &ImageRecord,
        undo: &mut Undo<'a>,
        from: Option<(&Path, RamMapping)>,
    ) -> Result<(), Error> {
        let engine = self.engine(vm)?;
        let dir = self.dir(vm);
        let ctx = Ctx {
            vm,
            image,
            dir: &dir,
        };
        let mut plan = BootPlan {
            drives: Vec::new(),
            nics: Vec::new(),
            guest: GuestConfig {
                version: 1,
                vm_name: vm.name.clone(),
                hostname: vm.name.clone(),
                authorized_keys: Vec::new(),
                network: None,
                git_identity: Vec::new(),
                ssh_host_key: None,
            },
            restore: from.is_some(),
            runtime: Default::default(),
        };
        op.stage("prepare", "prepare the host side", async {
            for cap in self.capabilities.for_vm(vm) {
                let t0 = Instant::now();
                cap.prepare(&ctx, &mut plan).await?;
                tracing::debug!(vm = %vm.name, capability = cap.name(), ms = t0.elapsed().as_millis() as u64, "prepared");
                let (cap, state) = (cap.clone(), plan.runtime.get(cap.name()).cloned());
                undo.push(format!("release {}", cap.name()), move || {
                    cap.release(vm, state.as_ref())
                });
            }
            Ok::<_, Error>(())
        })
        .await?;
        op.stage("config", "write guest config", async {
            crate::disks::write_config_drive(&plan.guest, &dir.config_drive()).map_err(Error::from)
        })
        .await?;
        let kernel = self.images.kernel(image)?;
        let (accel, _) = if engine.accel_needs_probe(&kernel) {
            op.stage("accel", "probe /dev/kvm", async {
                Ok::<_, Error>(engine.accel(&kernel).await)
            })
            .await?
        } else {
            engine.accel(&kernel).await
        };
        let mut drives = vec![engine.root_drive(&dir)];
        drives.extend(plan.drives.iter().cloned());
        drives.push(Drive {
            path: dir.config_drive(),
            format: DriveFormat::Raw,
            serial: banger_proto::CONFIG_DRIVE_SERIAL,
            read_only: true,
        });
        super::layers::Tops::load(&dir)
            .map_err(Error::io(format!(
                "cannot read {}",
                dir.file(super::layers::TOPS).display()
            )))?
            .apply(&dir, &mut drives);
        let spec = MachineSpec {
            vm_id: vm.id.clone(),
            name: vm.name.clone(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            kernel,
            initrd: Some(std::path::Path::new(&image.dir).join(banger_image::layout::INITRD))
                .filter(|p| p.exists()),
            cmdline_extra: image_cmdline(image),
            drives,
            nics: plan.nics.clone(),
            console_log: engine.console_log(&dir),
            engine_log: dir.engine_log(),
            run_dir: dir.run.clone(),
            state_dir: dir.state.clone(),
            accel,
            tsc_khz: banger_sys::process::tsc_khz(),
            tcg_aslr: self.config.tcg_aslr,
        };
        let handles = match from {
            None => {
                op.stage("engine", "start engine", async {
                    Ok::<_, Error>(engine.spawn(&spec).await?)
                })
                .await?
            }
            Some((snapshot, ram)) => {
                op.stage("engine", "restore engine", async {
                    Ok::<_, Error>(engine.restore(&spec, snapshot, ram).await?)
                })
                .await?
            }
        };
        {
            let (engine, handles) = (engine.clone(), handles.clone());
            undo.push_async("stop the engine", move || {
                Box::pin(async move { self.kill_engine(vm, &*engine, &handles).await })
            });
        }
        self.remember(
            vm,
            Running {
                engine: engine.kind(),
                handles: handles.clone(),
                capabilities: plan.runtime.clone(),
                agent: None,
            },
        )?;
        undo.push("forget the runtime", move || {
            self.runtime.remove(&vm.name);
            super::runtime::remove(&self.dir(vm));
        });
        let conn = op
            .stage(
                "agent",
                "wait for agent",
                self.wait_for_agent(vm, &*engine, &handles, from.is_none()),
            )
            .await?;
        let conn = Arc::new(conn);
        self.runtime.set_agent(&vm.name, conn.clone());
        self.guest_ready(op, &ctx, from.map(|_| &plan.guest), &conn)
            .await
    }

    /// The end of every boot, restore and taken standby: with `restored`
    /// (the config this boot gave a guest resumed from a snapshot), stage
    /// `identity`, every capability's `restored` hook; then every
    /// capability's `ready`.
    pub(super) async fn guest_ready(
        &self,
        op: &Op,
        ctx: &Ctx<'_>,
        restored: Option<&GuestConfig>,
        conn: &AgentConn,
    ) -> Result<(), Error> {
        if let Some(guest) = restored {
            op.stage("identity", "give the guest its identity", async {
                for cap in self.capabilities.for_vm(ctx.vm) {
                    cap.restored(ctx, guest, conn).await?;
                }
                Ok::<_, Error>(())
            })
            .await?;
        }
        for cap in self.capabilities.for_vm(ctx.vm) {
            cap.ready(ctx, conn).await?;
        }
        Ok(())
    }

    /// Connects to the agent, retrying until it answers (its health check
    /// too, with `health`: a restore's identity request comes next and
    /// serves as one), the engine dies, or the boot timeout passes; errors
    /// carry the last console lines, or a kernel panic's line and what led
    /// to it.
    async fn wait_for_agent(
        &self,
        vm: &VmRecord,
        engine: &dyn Engine,
        handles: &Handles,
        health: bool,
    ) -> Result<AgentConn, Error> {
        let timeout = Duration::from_secs(self.config.boot_timeout_secs);
        let deadline = Instant::now() + timeout;
        let connect = async {
            loop {
                match engine.connect_agent(handles).await {
                    Ok(io) => match AgentConn::handshake(io).await {
                        Ok(conn) => {
                            if health {
                                conn.health().await?;
                            }
                            return Ok::<_, Error>(conn);
                        }
                        Err(e @ crate::agent::AgentError::ProtocolMismatch { .. }) => {
                            return Err(e.into());
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
        tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), connect) => match r {
                Ok(r) => r,
                Err(_) => Err(Error::BootTimeout {
                    secs: timeout.as_secs(),
                    console: self.console_tail(vm, engine, 10),
                }),
            },
            _ = engine.wait_exit(handles) => {
                // Give the console file a moment to receive the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let log = crate::layout::tail(&self.dir(vm).engine_log(), 3);
                // A panic's own line says why; the trace after it does not.
                let panic = super::monitor::panic_report(&engine.console_log(&self.dir(vm)));
                Err(Error::EngineExited {
                    console: panic.unwrap_or_else(|| self.console_tail(vm, engine, 10)),
                    engine_log: if log.is_empty() { log } else { format!("; engine said: {log}") },
                })
            }
        }
    }
}

/// The kernel arguments `image` adds to banger's (its manifest's
/// `kernel_cmdline`).
pub(super) fn image_cmdline(image: &ImageRecord) -> String {
    serde_json::from_str::<serde_json::Value>(&image.manifest)
        .ok()
        .and_then(|m| m.get("kernel_cmdline")?.as_str().map(str::to_string))
        .unwrap_or_default()
}
