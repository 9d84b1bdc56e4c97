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
        let vm = self.plan_vm(req)?;
        let image = self.image_record(&vm.image)?;
        self.store.insert_vm(&vm)?;
        let op = self.ops.begin(OperationKind::Create, &vm.name);
        let (this, op2) = (self.clone(), op.clone());
        tokio::spawn(async move {
            let lock = this.vm_lock(&vm.name);
            let _guard = lock.lock().await;
            let result = this.run_create(&op2, &vm, &image).await;
            if let Err(e) = &result {
                tracing::warn!(vm = %vm.name, error = %crate::error::chain(e), "create failed; cleaning up");
                this.undo_create(&vm).await;
            }
            op2.finish(&this.store, result.map_err(|e| e.to_api()));
        });
        Ok(op)
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
        let id = format!("{:016x}", rand::random::<u64>());
        Ok(VmRecord {
            dir: self.vms_dir().join(&id).to_string_lossy().into_owned(),
            id,
            name,
            image,
            state: VmState::Creating,
            cpus,
            memory_mib,
            disk_size_mib,
            created_at: crate::now(),
            last_error: None,
        })
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
        if let Some(rt) = self.handles.get(&vm.name) {
            self.kill_engine(vm, &rt.handles).await;
        }
        self.release_runtime(vm);
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
