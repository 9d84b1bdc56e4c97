//! The work disk: an ext4 at `/root` that survives restarts. Made at create
//! from the image's work seed grown to the VM's size (a sparse copy of a
//! cached grown seed: no mkfs, no resize per VM), attached at every boot,
//! removed with the VM.

use super::{BootPlan, Capability, Ctx};
use crate::engine::{Drive, DriveFormat};
use crate::error::Error;
use crate::layout::VmDir;
use crate::store::VmRecord;
use banger_sys::command::Runner;
use futures::future::BoxFuture;
use std::path::Path;
use std::sync::Arc;

pub struct WorkDisk {
    runner: Arc<dyn Runner>,
}

impl WorkDisk {
    pub fn new(runner: Arc<dyn Runner>) -> WorkDisk {
        WorkDisk { runner }
    }
}

impl Capability for WorkDisk {
    fn name(&self) -> &'static str {
        "work-disk"
    }

    fn create<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), Error>> {
        let runner = self.runner.clone();
        let seed = Path::new(&ctx.image.dir).join(banger_image::layout::WORK_SEED);
        let (size, dest) = (ctx.vm.disk_size_mib, ctx.dir.work_disk());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                crate::disks::create_work_disk(&*runner, &seed, size, &dest)
            })
            .await
            .map_err(|source| Error::Task {
                task: "work disk",
                source,
            })??;
            Ok(())
        })
    }

    fn destroy(&self, vm: &VmRecord, dir: &VmDir) {
        if let Err(e) = std::fs::remove_file(dir.work_disk())
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(vm = %vm.name, error = %e, "cannot remove the work disk");
        }
    }

    fn prepare<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        plan: &'a mut BootPlan,
    ) -> BoxFuture<'a, Result<(), Error>> {
        plan.drives.push(Drive {
            path: ctx.dir.work_disk(),
            format: DriveFormat::Raw,
            serial: banger_proto::WORK_DRIVE_SERIAL,
            read_only: false,
        });
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Harness, empty_plan, recorded_vm};
    use banger_api::NetworkMode;

    #[tokio::test]
    async fn the_work_disk_is_made_attached_and_destroyed() {
        let h = Harness::new();
        let (vm, image, dir) = recorded_vm(&h, "web", NetworkMode::None);
        let cap = WorkDisk::new(h.runner.clone());
        let ctx = Ctx {
            vm: &vm,
            image: &image,
            dir: &dir,
        };
        cap.create(&ctx).await.unwrap();
        assert!(dir.work_disk().exists());
        let mut plan = empty_plan(&vm);
        cap.prepare(&ctx, &mut plan).await.unwrap();
        assert_eq!(plan.drives[0].path, dir.work_disk());
        assert_eq!(plan.drives[0].serial, banger_proto::WORK_DRIVE_SERIAL);
        cap.destroy(&vm, &dir);
        assert!(!dir.work_disk().exists());
    }
}
