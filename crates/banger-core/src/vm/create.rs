//! Creating a VM: validate the request, reserve the name with a `creating`
//! row, then (as an operation) make its disks and boot it. Any failure
//! removes everything the create made (process, disks, directories, row);
//! the operation record keeps the error with the last console lines.

use crate::config;
use crate::error::Error;
use crate::manager::Manager;
use crate::ops::Op;
use crate::store::{ImageRecord, VmRecord};
use banger_api::{CreateVm, OperationKind, VmState};
use std::path::Path;
use std::sync::Arc;

impl Manager {
    /// `vm create`: validates, records the VM and begins the operation.
    pub fn create(self: &Arc<Self>, req: CreateVm) -> Result<Arc<Op>, Error> {
        let mut vm = self.plan_vm(req)?;
        // A preset image that does not exist yet is built first, in this operation.
        let build_first = match self.store.image(&vm.image)? {
            Some(_) => None,
            None if crate::images::PRESETS.contains(&vm.image.as_str()) => Some(self.agent_bin()?),
            None => return Err(self.image_record(&vm.image).unwrap_err()),
        };
        if build_first.is_none() {
            self.record_new_vm(&mut vm)?;
        }
        let op = self.ops.begin(OperationKind::Create, &vm.name);
        let (this, op2) = (self.clone(), op.clone());
        tokio::spawn(async move {
            if let Some(agent_bin) = build_first
                && let Err(e) = this.build_missing_image(&op2, &mut vm, agent_bin).await
            {
                op2.finish(&this.store, Err(e.to_api()));
                return;
            }
            let lock = this.vm_lock(&vm.name);
            let _guard = lock.lock().await;
            let result = match this.image_record(&vm.image) {
                Ok(image) => this.run_create(&op2, &vm, &image).await,
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                tracing::warn!(vm = %vm.name, error = %crate::error::chain(e), "create failed; cleaning up");
                this.undo_create(&vm).await;
            }
            op2.finish(&this.store, result.map_err(|e| e.to_api()));
        });
        Ok(op)
    }

    /// Builds the preset `vm.image` (once, even with concurrent creates),
    /// then records the VM.
    async fn build_missing_image(
        &self,
        op: &Arc<Op>,
        vm: &mut VmRecord,
        agent_bin: std::path::PathBuf,
    ) -> Result<(), Error> {
        let lock = self.vm_lock(&format!("image:{}", vm.image));
        let guard = lock.lock().await;
        if self.store.image(&vm.image)?.is_none() {
            let req = banger_api::BuildImage {
                name: Some(vm.image.clone()),
                preset: vm.image.clone(),
                force: false,
                ..Default::default()
            };
            let plan = crate::images::plan_build(&req)?;
            self.run_build(op, plan, agent_bin).await?;
        }
        drop(guard);
        self.record_new_vm(vm)
    }

    /// Turns a request into the VM's durable record, or says what is wrong.
    pub fn plan_vm(&self, req: CreateVm) -> Result<VmRecord, Error> {
        let name = match req.name {
            Some(n) => {
                banger_api::validate_vm_name(&n).map_err(Error::Invalid)?;
                n
            }
            None => super::names::generate(|n| self.store.vm(n).ok().flatten().is_some()),
        };
        if self.store.vm(&name)?.is_some() {
            return Err(crate::store::StoreError::DuplicateVm(name).into());
        }
        let image = req
            .image
            .unwrap_or_else(|| self.config.default_image.clone());
        let cpus = req.cpus.unwrap_or(self.config.default_cpus);
        config::check_cpus(cpus).map_err(|p| Error::Invalid(format!("--cpus {p}")))?;
        let memory_mib = req.memory_mib.unwrap_or(self.config.default_memory_mib);
        config::check_memory(memory_mib).map_err(|p| Error::Invalid(format!("--memory {p}")))?;
        let disk_size_mib = req
            .disk_size_mib
            .unwrap_or(self.config.default_disk_size_mib);
        config::check_disk(disk_size_mib)
            .map_err(|p| Error::Invalid(format!("--disk-size {p}")))?;
        let mode = match &req.network {
            Some(m) => crate::net::Mode::parse(m).map_err(Error::Invalid)?,
            None => self.default_network(),
        };
        let publish = self.plan_ports(mode, &req.publish)?;
        // MACs derive from the id: draw again on the (rare) clash.
        let macs: Vec<String> = self
            .store
            .vms()?
            .into_iter()
            .filter_map(|v| v.mac)
            .collect();
        let id = loop {
            let id = format!("{:016x}", rand::random::<u64>());
            if !macs.contains(&crate::net::mac_for(&id)) {
                break id;
            }
        };
        Ok(VmRecord {
            mac: (mode != crate::net::Mode::None).then(|| crate::net::mac_for(&id)),
            network: mode.as_str().into(),
            publish,
            ip: None,
            dir: self.vms_dir().join(&id).to_string_lossy().into_owned(),
            id,
            name,
            image,
            state: VmState::Creating,
            cpus,
            memory_mib,
            disk_size_mib,
            created_at: banger_sys::clock::unix_now(),
            last_error: None,
        })
    }

    /// Inserts the row, leasing a bridge address when the VM needs one (a
    /// concurrent create may take the same address first: pick again).
    fn record_new_vm(&self, vm: &mut VmRecord) -> Result<(), Error> {
        if vm.network != crate::net::Mode::Bridge.as_str() {
            return Ok(self.store.insert_vm(vm)?);
        }
        let subnet =
            crate::net::Subnet::parse(&self.config.bridge_subnet).map_err(Error::Invalid)?;
        for _ in 0..8 {
            let ip = crate::net::ipam::allocate(&subnet, &self.store.leased_ips()?).ok_or_else(
                || {
                    Error::Conflict(format!(
                        "no free address left in {subnet}: delete a vm or widen bridge_subnet"
                    ))
                },
            )?;
            vm.ip = Some(ip.to_string());
            match self.store.insert_vm(vm) {
                Err(crate::store::StoreError::AddressTaken(_)) => continue,
                other => return Ok(other?),
            }
        }
        Err(Error::failed(
            "could not lease an address: too many concurrent creates, try again",
        ))
    }

    /// Loopback forwards of a user-mode VM: the requested ones, plus one for
    /// ssh when none forwards guest port 22.
    fn plan_ports(
        &self,
        mode: crate::net::Mode,
        publish: &[String],
    ) -> Result<Vec<banger_api::PortForward>, Error> {
        let mut ports = publish
            .iter()
            .map(|p| banger_api::PortForward::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::Invalid)?;
        if mode != crate::net::Mode::User {
            if !ports.is_empty() {
                return Err(Error::Invalid(format!(
                    "--publish needs --network user; a {} vm is reached {}",
                    mode.as_str(),
                    if mode == crate::net::Mode::Bridge {
                        "at its own address"
                    } else {
                        "through banger only"
                    }
                )));
            }
            return Ok(ports);
        }
        for p in &ports {
            if std::net::TcpListener::bind(("127.0.0.1", p.host)).is_err() {
                return Err(Error::Conflict(format!(
                    "port {} on 127.0.0.1 is in use: pick another --publish host port",
                    p.host
                )));
            }
        }
        if !ports.iter().any(|p| p.guest == 22) {
            let host = crate::net::free_loopback_port()
                .map_err(Error::io("cannot pick a loopback port for ssh"))?;
            ports.push(banger_api::PortForward { host, guest: 22 });
        }
        Ok(ports)
    }

    async fn run_create(&self, op: &Op, vm: &VmRecord, image: &ImageRecord) -> Result<(), Error> {
        op.stage("disks", "prepare disks", async {
            let (runner, vm, image) = (self.runner.clone(), vm.clone(), image.clone());
            tokio::task::spawn_blocking(move || make_disks(&*runner, &vm, &image))
                .await
                .map_err(|e| Error::failed(format!("disk task panicked: {e}")))?
        })
        .await?;
        self.boot(op, vm, image).await?;
        self.store.set_vm_state(&vm.name, VmState::Running, None)?;
        Ok(())
    }

    /// Removes everything a failed create made.
    async fn undo_create(&self, vm: &VmRecord) {
        // kill_engine releases the runtime itself; without an engine there
        // may still be a socket dir from a spawn that failed.
        match self.handles.get(&vm.name) {
            Some(rt) => self.kill_engine(vm, &rt.handles).await,
            None => self.release_runtime(vm),
        }
        let _ = std::fs::remove_dir_all(&vm.dir);
        if let Err(e) = self.store.delete_vm(&vm.name) {
            tracing::error!(vm = %vm.name, error = %e, "cannot remove the failed vm's record");
        }
    }
}

fn make_disks(
    runner: &dyn banger_sys::command::Runner,
    vm: &VmRecord,
    image: &ImageRecord,
) -> Result<(), Error> {
    let dir = Path::new(&vm.dir);
    std::fs::create_dir_all(dir).map_err(Error::io(format!("cannot create {}", dir.display())))?;
    let img = Path::new(&image.dir);
    let disk_err = |e: crate::disks::DiskError| Error::failed(crate::error::chain(&e));
    crate::disks::create_overlay(runner, &img.join("rootfs.ext4"), &dir.join("root.qcow2"))
        .map_err(disk_err)?;
    crate::disks::create_work_disk(
        runner,
        &img.join("work-seed.ext4"),
        vm.disk_size_mib,
        &dir.join("work.ext4"),
    )
    .map_err(disk_err)?;
    Ok(())
}
