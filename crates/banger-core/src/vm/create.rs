//! Creating a VM: validate the request (and let every capability check its
//! part) and reserve the name with a `creating` row, then, as an
//! operation: build the preset image when it does not exist yet, make the
//! root disk (the engine's) and each capability's durable resources (one
//! stage), and boot. Every step pushes its undo; a failure unwinds the stack, so nothing
//! is left: no process, tap, lease, DNS name, disk, directory or row. The
//! operation record keeps the error with the last console lines.

use super::Lifecycle;
use super::undo::Undo;
use crate::capability::Ctx;
use crate::config;
use crate::error::Error;
use crate::ops::Op;
use crate::store::{ImageRecord, VmRecord};
use banger_api::{CreateVm, OperationKind, VmState};
use std::path::Path;
use std::sync::Arc;

impl Lifecycle {
    /// `vm create`: validates, records the VM and begins the operation.
    pub fn create(self: &Arc<Self>, req: CreateVm) -> Result<Arc<Op>, Error> {
        if req.from_snapshot.is_some() {
            return self.create_from_snapshot(req);
        }
        let vm = self.plan_vm(&req)?;
        crate::space::ensure_room(&self.paths.state_dir, "creating a vm")?;
        // A preset image that does not exist yet is built first, in this operation.
        let build_first = self.images.needs_build(&vm.image)?;
        if build_first.is_none() {
            self.store.insert_vm(&vm)?;
        }
        let this = self.clone();
        let name = vm.name.clone();
        let cold = req.cold;
        let req = CreateVm { name: None, ..req };
        Ok(self
            .ops
            .spawn(OperationKind::Create, &name, |op| async move {
                if let Some(agent_bin) = build_first {
                    this.images.ensure_preset(&op, &vm.image, agent_bin).await?;
                    this.store.insert_vm(&vm)?;
                }
                let lock = this.lock(&vm.name);
                let _guard = lock.lock().await;
                let warm = this.choose_warm(&op, &req, &vm, cold).await;
                match warm {
                    Some((dir, standby)) => {
                        let adopted = match standby {
                            Some(standby) => this.adopt(&op, &vm, &standby).await.map_err(|e| {
                                tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "restoring the warm snapshot instead");
                            }),
                            None => Err(()),
                        };
                        let made = match adopted {
                            Ok(()) => Ok(()),
                            Err(()) => {
                                let source = super::clone::Source::Warm {
                                    dir: dir.clone(),
                                    image: vm.image.clone(),
                                };
                                this.run_create_from(&op, &vm, source).await
                            }
                        };
                        if made.is_ok() {
                            this.refill_standby(&req, &dir);
                        }
                        made
                    }
                    None => this.run_create(&op, &vm).await,
                }
                .map_err(|e| crate::space::explain(e, &this.paths.state_dir, "creating a vm"))
            }))
    }

    /// The warm snapshot to restore `vm` from, if one fits, and the
    /// standby made from it that fits (`standby.rs`), if there is one;
    /// stage `warm` says which, or why the VM boots instead.
    async fn choose_warm(
        &self,
        op: &Op,
        req: &CreateVm,
        vm: &VmRecord,
        cold: bool,
    ) -> Option<(std::path::PathBuf, Option<String>)> {
        let t0 = op.begin_stage("warm", "look for a warm snapshot");
        let (chosen, detail) = if cold {
            (None, "booting: --cold".to_string())
        } else {
            match self.warm_for(vm).await {
                Ok(dir) => match self.take_standby(req, vm, &dir).await {
                    Some(standby) => (
                        Some((dir, Some(standby.clone()))),
                        format!(
                            "taking {standby}, made ahead from the warm snapshot of image {}",
                            vm.image
                        ),
                    ),
                    None => (
                        Some((dir, None)),
                        format!("restoring the warm snapshot of image {}", vm.image),
                    ),
                },
                Err(why) => (None, format!("booting: {why}")),
            }
        };
        op.end_stage("warm", t0, None, Some(detail));
        chosen
    }

    /// Turns a request into the VM's durable record, or says what is wrong.
    pub(crate) fn plan_vm(&self, req: &CreateVm) -> Result<VmRecord, Error> {
        let name = match &req.name {
            Some(n) => {
                banger_api::validate_vm_name(n).map_err(|p| Error::invalid("--name", p))?;
                n.clone()
            }
            None => super::names::generate(|n| self.store.vm(n).ok().flatten().is_some()),
        };
        if self.store.vm(&name)?.is_some() {
            return Err(crate::store::StoreError::DuplicateVm(name).into());
        }
        let cpus = req.cpus.unwrap_or(self.config.default_cpus);
        config::check_cpus(cpus).map_err(|p| Error::invalid("--cpus", p))?;
        let memory_mib = req.memory_mib.unwrap_or(self.config.default_memory_mib);
        config::check_memory(memory_mib).map_err(|p| Error::invalid("--memory", p))?;
        let disk_size_mib = req
            .disk_size_mib
            .unwrap_or(self.config.default_disk_size_mib);
        config::check_disk(disk_size_mib).map_err(|p| Error::invalid("--disk-size", p))?;
        let id = self.new_vm_id()?;
        let mut vm = VmRecord {
            network: req.network.unwrap_or_else(|| self.network.default_mode()),
            engine: req.engine.unwrap_or(self.engines.default_kind()),
            publish: Vec::new(),
            ip: None,
            mac: None,
            dir: self
                .paths
                .state_dir
                .join("vms")
                .join(&id)
                .to_string_lossy()
                .into_owned(),
            id,
            name,
            image: req
                .image
                .clone()
                .unwrap_or_else(|| self.config.default_image.clone()),
            state: VmState::Creating,
            cpus,
            memory_mib,
            disk_size_mib,
            created_at: banger_sys::clock::unix_now(),
            last_error: None,
            options: Default::default(),
        };
        self.engine(&vm)?;
        self.capabilities.plan(req, &mut vm)?;
        Ok(vm)
    }

    /// A new VM id. A VM's MAC derives from its id: draw again on the
    /// (rare) clash.
    pub(super) fn new_vm_id(&self) -> Result<String, Error> {
        let macs: Vec<String> = self
            .store
            .vms()?
            .into_iter()
            .filter_map(|v| v.mac)
            .collect();
        Ok(loop {
            let id = format!("{:016x}", rand::random::<u64>());
            if !macs.contains(&crate::net::mac_for(&id)) {
                break id;
            }
        })
    }

    /// Makes and boots the recorded `vm`; on failure, undoes all of it,
    /// the row included.
    pub(super) async fn run_create(&self, op: &Op, vm: &VmRecord) -> Result<(), Error> {
        let image = self.images.record(&vm.image)?;
        // The record as the capabilities left it (an address lease).
        let made: VmRecord;
        let mut undo = Undo::new();
        undo.push("forget the vm", move || {
            if let Err(e) = self.store.delete_vm(&vm.name) {
                tracing::error!(vm = %vm.name, error = %crate::error::chain(&e), "cannot remove the failed vm's record");
            }
        });
        let result = match self.make(op, vm, &image, &mut undo).await {
            Err(e) => Err(e),
            Ok(()) => match self.record(&vm.name) {
                Err(e) => Err(e),
                Ok(v) => {
                    made = v;
                    match self.boot(op, &made, &image, &mut undo).await {
                        Ok(()) => self
                            .store
                            .set_vm_state(&vm.name, VmState::Running, None)
                            .map_err(Error::from),
                        Err(e) => Err(e),
                    }
                }
            },
        };
        undo.settle(&result, &format!("create of vm {}", vm.name))
            .await;
        result
    }

    /// The root disk and each capability's durable resources.
    async fn make<'a>(
        &'a self,
        op: &Op,
        vm: &'a VmRecord,
        image: &ImageRecord,
        undo: &mut Undo<'a>,
    ) -> Result<(), Error> {
        let engine = self.engine(vm)?;
        let dir = self.dir(vm);
        op.stage("disks", "prepare disks", async {
            dir.create()
                .map_err(Error::io(format!("cannot create {}", dir.state.display())))?;
            let dir2 = dir.clone();
            undo.push("remove the vm's directories", move || {
                if let Err(e) = dir2.remove() {
                    tracing::warn!(vm = %vm.name, error = %e, "cannot remove the vm's directories");
                }
            });
            let base = Path::new(&image.dir).join(banger_image::layout::ROOTFS);
            let (engine, dir2) = (engine.clone(), dir.clone());
            tokio::task::spawn_blocking(move || engine.create_root_disk(&base, &dir2))
                .await
                .map_err(|source| Error::Task {
                    task: "root disk",
                    source,
                })??;
            let ctx = Ctx {
                vm,
                image,
                dir: &dir,
            };
            for cap in self.capabilities.for_vm(vm) {
                cap.create(&ctx).await?;
                let (cap, dir) = (cap.clone(), dir.clone());
                undo.push(format!("destroy {}", cap.name()), move || {
                    cap.destroy(vm, &dir)
                });
            }
            Ok::<_, Error>(())
        })
        .await?;
        Ok(())
    }
}
