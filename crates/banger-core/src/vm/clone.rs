//! `vm create --from-snapshot VM/SNAPSHOT`: a new VM (its own name, id,
//! MAC, address, DNS name, directories) that starts from another VM's
//! snapshot instead of booting. Its machine is the snapshot's (CPUs,
//! memory, image, disk size, network mode and engine: the device state
//! only loads into the same devices); asking for other values is refused.
//! As an operation, under the new VM's lock:
//!
//! 1. `disks`, under the source VM's lock (its snapshot stays while it is
//!    read): the new VM's directories; the snapshot's frozen layers and
//!    every layer under them put into the new VM's dir at the same paths,
//!    with a new empty top over each (`layers::link_frozen`): each drive's
//!    first layer (the work disk and the root's changes to the image as
//!    they were at the source's first snapshot: the bulk) hard-linked, the
//!    layers the source wrote between snapshots copied and made to name
//!    their bases in the new dir. Frozen layers are never written and a
//!    link outlives the source, so the new VM depends on no path of it.
//!    (A layer's name for its base stays absolute: QEMU reports a layer
//!    put over a base it opened by another name as a `json:` name that
//!    grows with every snapshot.) Without a record of what a layer is
//!    over, the disks are copied whole (root: only what differs from the
//!    image; work: sparse). Then every other capability's `create` (an
//!    address lease); the snapshot's
//!    device state and RAM linked into the new VM's dir (they are never
//!    written once saved);
//! 2. the boot sequence restoring from those files (`boot.rs`), the RAM
//!    mapped privately: VMs made from one snapshot (`vm fork`) share the
//!    pages none of them changed.
//!
//! A failure unwinds all of it, the row included, like a create.
//!
//! The guest itself is the snapshot's: until the agent re-applies identity
//! after a restore (hostname, addresses, RNG), it keeps the source's.

use super::Lifecycle;
use super::layers;
use super::undo::Undo;
use crate::capability::Ctx;
use crate::engine::snapshot::{RAM_FILE, STATE_FILE};
use crate::engine::{DriveFormat, EngineError, Layer, RamMapping};
use crate::error::Error;
use crate::ops::Op;
use crate::store::VmRecord;
use banger_api::{CreateVm, OperationKind, VmState};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a new VM keeps the snapshot files it starts from, until it runs.
const FROM_SNAPSHOT: &str = "from-snapshot";

impl Lifecycle {
    /// `vm create --from-snapshot`: validates, records the VM and begins the
    /// operation.
    pub fn create_from_snapshot(self: &Arc<Self>, req: CreateVm) -> Result<Arc<Op>, Error> {
        let from = req.from_snapshot.clone().unwrap_or_default();
        let (src, snap) = from.split_once('/').ok_or_else(|| {
            Error::invalid(
                "--from-snapshot",
                format!("{from:?} is not VM/SNAPSHOT (see `banger vm snapshot list VM`)"),
            )
        })?;
        let source = self.record(src)?;
        if !self
            .store
            .snapshots(&source.id)?
            .iter()
            .any(|s| s.name == snap)
        {
            return Err(Error::SnapshotNotFound {
                vm: src.into(),
                name: snap.into(),
            });
        }
        let same = |flag: &str, asked: Option<String>, have: String| match asked {
            Some(a) if a != have => Err(Error::invalid(
                flag,
                format!("must be the snapshot's vm's ({have}); leave it out"),
            )),
            _ => Ok(()),
        };
        same(
            "--cpus",
            req.cpus.map(|v| v.to_string()),
            source.cpus.to_string(),
        )?;
        same(
            "--memory",
            req.memory_mib.map(|v| format!("{v} MiB")),
            format!("{} MiB", source.memory_mib),
        )?;
        same(
            "--disk-size",
            req.disk_size_mib.map(|v| format!("{v} MiB")),
            format!("{} MiB", source.disk_size_mib),
        )?;
        same("--image", req.image.clone(), source.image.clone())?;
        same(
            "--network",
            req.network.map(|n| n.as_str().to_string()),
            source.network.as_str().to_string(),
        )?;
        let planned = same_machine(&source, req);
        let vm = self.plan_vm(&planned)?;
        crate::space::ensure_room(&self.paths.state_dir, "creating a vm")?;
        self.store.insert_vm(&vm)?;
        let (this, name) = (self.clone(), vm.name.clone());
        let (src, snap) = (src.to_string(), snap.to_string());
        Ok(self
            .ops
            .spawn(OperationKind::Create, &name, |op| async move {
                let lock = this.lock(&vm.name);
                let _guard = lock.lock().await;
                this.run_create_from(
                    &op,
                    &vm,
                    Source::Snapshot {
                        vm: src,
                        name: snap,
                    },
                )
                .await
                .map_err(|e| crate::space::explain(e, &this.paths.state_dir, "creating a vm"))
            }))
    }

    pub(super) async fn run_create_from(
        &self,
        op: &Op,
        vm: &VmRecord,
        source: Source,
    ) -> Result<(), Error> {
        let image = self.images.record(&vm.image)?;
        let made: VmRecord;
        let mut undo = Undo::new();
        undo.push("forget the vm", move || {
            if let Err(e) = self.store.delete_vm(&vm.name) {
                tracing::error!(vm = %vm.name, error = %crate::error::chain(&e), "cannot remove the failed vm's record");
            }
        });
        let result = match self.copy_from(op, vm, &source, &mut undo).await {
            Err(e) => Err(e),
            Ok(files) => match self.record(&vm.name) {
                Err(e) => Err(e),
                Ok(v) => {
                    made = v;
                    let booted = self
                        .boot_from(
                            op,
                            &made,
                            &image,
                            &mut undo,
                            Some((&files, RamMapping::Private)),
                        )
                        .await;
                    let _ = std::fs::remove_dir_all(&files);
                    booted.and_then(|()| {
                        self.store
                            .set_vm_state(&vm.name, VmState::Running, None)
                            .map_err(Error::from)
                    })
                }
            },
        };
        undo.settle(&result, &format!("create from snapshot of vm {}", vm.name))
            .await;
        result
    }

    /// Step 1; returns the directory with the snapshot's state and RAM.
    async fn copy_from<'a>(
        &'a self,
        op: &Op,
        vm: &'a VmRecord,
        source: &Source,
        undo: &mut Undo<'a>,
    ) -> Result<PathBuf, Error> {
        let engine = self.engine(vm)?;
        let dir = self.dir(vm);
        let image = self.images.record(&vm.image)?;
        op.stage("disks", "copy disks from the snapshot", async {
            dir.create()
                .map_err(Error::io(format!("cannot create {}", dir.state.display())))?;
            let dir2 = dir.clone();
            undo.push("remove the vm's directories", move || {
                if let Err(e) = dir2.remove() {
                    tracing::warn!(vm = %vm.name, error = %e, "cannot remove the vm's directories");
                }
            });
            // The source stays while it is read.
            let lock = match source {
                Source::Snapshot { vm, .. } => self.lock(vm),
                Source::Warm { image, .. } => self.lock(&format!("warm:{image}")),
            };
            let _guard = lock.lock().await;
            let root = engine.root_drive(&dir);
            let root = Layer {
                path: root.path,
                format: root.format,
            };
            let work = Layer {
                path: dir.work_disk(),
                format: DriveFormat::Raw,
            };
            let (from, copies) = match source {
                Source::Snapshot {
                    vm: src,
                    name: snap,
                } => {
                    let source = self.record(src)?;
                    let sdir = self.dir(&source);
                    let from = layers::snapshot_dir(&sdir, snap);
                    let manifest =
                        layers::read_manifest(&from).map_err(|_| Error::SnapshotNotFound {
                            vm: src.clone(),
                            name: snap.clone(),
                        })?;
                    if layers::link_frozen(&*engine, &sdir, &manifest, &dir)? {
                        // New empty tops over the linked layers.
                        super::restore::layers_from(&*engine, &dir, &manifest)?;
                        (from, Vec::new())
                    } else {
                        let copies = layers::copies(
                            &manifest,
                            &sdir,
                            &from,
                            &image,
                            root.clone(),
                            work.clone(),
                        )?
                        .into_iter()
                        .map(|(top, base, dest)| Copy::Layer(top, base, dest))
                        .collect();
                        (from, copies)
                    }
                }
                // Its root layer is over the image's rootfs already, as the
                // VM's own would be: a plain copy of each file will do.
                Source::Warm { dir: from, .. } => {
                    let mut copies =
                        vec![Copy::Root(from.join(super::warm::ROOT), root.path.clone())];
                    let work_from = from.join(super::warm::WORK);
                    if work_from.exists() {
                        copies.push(Copy::Work(work_from, work.path.clone()));
                    }
                    (from.clone(), copies)
                }
            };
            let (engine2, runner) = (engine.clone(), self.runner.clone());
            tokio::task::spawn_blocking(move || {
                copies.iter().try_for_each(|copy| match copy {
                    Copy::Layer(top, base, dest) => engine2
                        .copy_layer(top, base.as_ref(), dest)
                        .map_err(Error::from),
                    Copy::Root(from, to) => {
                        crate::disks::sparse_copy(&*runner, from, to).map_err(|source| {
                            Error::from(EngineError::RootDisk {
                                path: to.clone(),
                                source,
                            })
                        })
                    }
                    Copy::Work(from, to) => {
                        crate::disks::sparse_copy(&*runner, from, to).map_err(|source| {
                            Error::from(crate::disks::DiskError::Copy {
                                path: to.clone(),
                                source,
                            })
                        })
                    }
                })
            })
            .await
            .map_err(|source| Error::Task {
                task: "copy disks",
                source,
            })??;
            let files = dir.file(FROM_SNAPSHOT);
            link_or_copy(&from, &files).map_err(Error::io(format!(
                "cannot copy {} into {}",
                from.display(),
                files.display()
            )))?;
            let ctx = Ctx {
                vm,
                image: &image,
                dir: &dir,
            };
            for cap in self.capabilities.for_vm(vm) {
                // The work disk came from the snapshot above.
                if cap.name() != "work-disk" {
                    cap.create(&ctx).await?;
                }
                let (cap, dir) = (cap.clone(), dir.clone());
                undo.push(format!("destroy {}", cap.name()), move || {
                    cap.destroy(vm, &dir)
                });
            }
            Ok::<_, Error>(files)
        })
        .await
    }
}

/// `req` with `source`'s machine (CPUs, memory, disk size, image,
/// network, engine): a snapshot's device state loads only into it.
pub(super) fn same_machine(source: &VmRecord, req: CreateVm) -> CreateVm {
    CreateVm {
        cpus: Some(source.cpus),
        memory_mib: Some(source.memory_mib),
        disk_size_mib: Some(source.disk_size_mib),
        image: Some(source.image.clone()),
        network: Some(source.network),
        engine: Some(source.engine),
        ..req
    }
}

/// Where a new VM's machine comes from.
pub(super) enum Source {
    /// A VM's snapshot.
    Snapshot { vm: String, name: String },
    /// An image's warm snapshot (`vm/warm.rs`), kept in `dir`.
    Warm { dir: PathBuf, image: String },
}

/// One disk of the new VM: a layer flattened over an optional base, or
/// the root or work disk copied as it is (sparse).
enum Copy {
    Layer(Layer, Option<Layer>, Layer),
    Root(PathBuf, PathBuf),
    Work(PathBuf, PathBuf),
}

/// The snapshot's device state and RAM into `to`: hard links (a saved
/// snapshot's files never change), or copies across filesystems.
pub(super) fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(to)?;
    for name in [STATE_FILE, RAM_FILE] {
        let src = from.join(name);
        if !src.exists() {
            continue;
        }
        if std::fs::hard_link(&src, to.join(name)).is_err() {
            std::fs::copy(&src, to.join(name))?;
        }
    }
    Ok(())
}
