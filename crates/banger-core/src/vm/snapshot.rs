//! `vm snapshot`, `vm snapshot list|delete`: a running VM's device state,
//! RAM and disks at one moment, kept in its state dir (`vm::layers` says
//! where). Taking one, under the VM's lock, in stages:
//!
//! 1. `layers`: a new empty copy-on-write layer over each writable drive's
//!    top, recorded as the new top (`layers.json`) before the engine moves
//!    onto it (an empty layer over the one still written shows the same
//!    disk, so a crash here loses nothing);
//! 2. `memory`: the engine pauses the guest, moves its drives onto the new
//!    layers (the old tops are frozen from then on), writes device state and
//!    RAM into a staging directory, and lets the guest run on;
//! 3. `save`: the manifest (the frozen layers, sizes, engine) written, the
//!    files flushed, the staging directory renamed to `snapshots/NAME`, the
//!    row recorded;
//! 4. `stop` (with `--stop`): the paused engine stopped, the VM recorded
//!    stopped.
//!
//! A failure unwinds the staging directory. What a killed daemon left is
//! cleared the next time the VM's snapshots are touched ([`sweep`]): staging
//! directories removed, a complete directory without a row recorded.

use super::Lifecycle;
use super::layers::{self, LayerRef, Manifest, Tops};
use super::undo::Undo;
use crate::engine::{Drive, DriveFormat, Engine, Layer, Switch};
use crate::error::{Action, Error};
use crate::layout::VmDir;
use crate::ops::Op;
use crate::store::VmRecord;
use crate::store::snapshots::SnapshotRecord;
use banger_api::{OperationKind, Snapshot, TakeSnapshot, VmState};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

impl Lifecycle {
    /// `vm snapshot`: begins the operation and returns it at once. Its
    /// target is `VM/SNAPSHOT`.
    pub fn snapshot(self: &Arc<Self>, name: &str, req: TakeSnapshot) -> Result<Arc<Op>, Error> {
        let vm = self.running_record(name)?;
        let existing = self.store.snapshots(&vm.id)?;
        let snap = match req.name {
            Some(s) => {
                banger_api::validate_snapshot_name(&s).map_err(|p| Error::invalid("name", p))?;
                if existing.iter().any(|e| e.name == s) {
                    return Err(Error::SnapshotExists {
                        vm: name.into(),
                        name: s,
                    });
                }
                s
            }
            None => (1..)
                .map(|n| format!("snap-{n}"))
                .find(|s| existing.iter().all(|e| &e.name != s))
                .expect("a free name"),
        };
        // The guest's RAM goes to the disk (as much as it touched, at most
        // all of it), besides the room any work starts with.
        let need = crate::space::ROOM + (vm.memory_mib << 20);
        crate::space::ensure(&self.paths.state_dir, need, "taking a snapshot")?;
        let (this, name, stop) = (self.clone(), name.to_string(), req.stop);
        let target = format!("{name}/{snap}");
        Ok(self
            .ops
            .spawn(OperationKind::Snapshot, &target, |op| async move {
                this.run_snapshot(&op, &name, &snap, stop)
                    .await
                    .map_err(|e| {
                        crate::space::explain(e, &this.paths.state_dir, "taking a snapshot")
                    })
            }))
    }

    pub(super) async fn run_snapshot(
        &self,
        op: &Op,
        name: &str,
        snap: &str,
        stop: bool,
    ) -> Result<(), Error> {
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let vm = self.record(name)?;
        let engine = self.engine(&vm)?;
        let running = self
            .runtime
            .get(name)
            .filter(|r| engine.alive(&r.handles))
            .ok_or_else(|| Error::WrongState {
                name: name.into(),
                state: VmState::Stopped,
                action: Action::Use,
            })?;
        let dir = self.dir(&vm);
        self.sweep_snapshots(&vm, &dir)?;
        if self.store.snapshots(&vm.id)?.iter().any(|s| s.name == snap) {
            return Err(Error::SnapshotExists {
                vm: name.into(),
                name: snap.into(),
            });
        }
        let (switches, frozen) = op
            .stage("layers", "new disk layers", async {
                new_layers(&vm, &*engine, &dir)
            })
            .await?;
        let mut undo = Undo::new();
        let staging = layers::staging_dir(&dir, snap).map_err(Error::io(format!(
            "cannot make a snapshot directory in {}",
            layers::snapshots_dir(&dir).display()
        )))?;
        {
            let staging = staging.clone();
            undo.push("remove the snapshot's staging dir", move || {
                let _ = std::fs::remove_dir_all(&staging);
            });
        }
        let result = async {
            let report = op
                .stage("memory", "save memory and devices", async {
                    Ok::<_, Error>(
                        engine
                            .snapshot(&running.handles, &staging, &switches, !stop)
                            .await?,
                    )
                })
                .await?;
            op.stage("save", "save snapshot", async {
                let manifest = Manifest {
                    version: 1,
                    vm_id: vm.id.clone(),
                    name: snap.into(),
                    created_at: banger_sys::clock::unix_now(),
                    engine: engine.kind().as_str().into(),
                    cpus: vm.cpus,
                    memory_mib: vm.memory_mib,
                    layers: frozen.clone(),
                    paused_ms: report.paused_ms,
                };
                let err = Error::io(format!("cannot save the snapshot in {}", staging.display()));
                let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
                std::fs::write(staging.join(layers::MANIFEST), json).map_err(err)?;
                let dest = layers::publish(&staging, &dir, snap).map_err(Error::io(format!(
                    "cannot save the snapshot in {}",
                    staging.display()
                )))?;
                self.record_snapshot(&vm, &dir, &dest, &manifest)?;
                tracing::info!(vm = %name, snapshot = %snap, paused_ms = report.paused_ms, "snapshot taken");
                Ok::<_, Error>(())
            })
            .await
        }
        .await;
        undo.settle(&result, &format!("snapshot {snap} of vm {name}"))
            .await;
        result?;
        if stop {
            op.stage("stop", "stop engine", async {
                engine
                    .stop(&running.handles, Duration::from_secs(5))
                    .await?;
                self.release_runtime(&vm);
                self.store.set_vm_state(name, VmState::Stopped, None)?;
                Ok::<_, Error>(())
            })
            .await?;
        }
        Ok(())
    }

    fn record_snapshot(
        &self,
        vm: &VmRecord,
        dir: &VmDir,
        snap: &std::path::Path,
        manifest: &Manifest,
    ) -> Result<(), Error> {
        let usage = layers::snapshot_usage(dir, snap, manifest);
        self.store.insert_snapshot(&SnapshotRecord {
            vm_id: vm.id.clone(),
            name: manifest.name.clone(),
            size_bytes: usage.total(),
            created_at: manifest.created_at,
        })?;
        Ok(())
    }

    /// Brings the VM's snapshot rows and directories together after a
    /// killed daemon: staging dirs go, complete dirs get their row, rows
    /// whose dir is gone go. Runs under the VM's lock.
    pub(super) fn sweep_snapshots(&self, vm: &VmRecord, dir: &VmDir) -> Result<(), Error> {
        let complete = layers::sweep(dir);
        let rows = self.store.snapshots(&vm.id)?;
        for row in &rows {
            if !complete.contains(&row.name) {
                self.store.delete_snapshot(&vm.id, &row.name)?;
            }
        }
        for name in complete {
            if rows.iter().any(|r| r.name == name) {
                continue;
            }
            let path = layers::snapshot_dir(dir, &name);
            match layers::read_manifest(&path) {
                Ok(m) if m.vm_id == vm.id && m.name == name => {
                    self.record_snapshot(vm, dir, &path, &m)?
                }
                _ => {
                    tracing::warn!(dir = %path.display(), "a snapshot dir with an unreadable manifest; leaving it")
                }
            }
        }
        Ok(())
    }

    /// `vm snapshot list`.
    pub fn snapshots(&self, name: &str) -> Result<Vec<Snapshot>, Error> {
        let vm = self.record(name)?;
        let dir = self.dir(&vm);
        Ok(self
            .store
            .snapshots(&vm.id)?
            .into_iter()
            .map(|s| {
                // Counted now: what is shared changes as VMs made from the
                // snapshot come and go.
                let snap = layers::snapshot_dir(&dir, &s.name);
                let usage = match layers::read_manifest(&snap) {
                    Ok(manifest) => layers::snapshot_usage(&dir, &snap, &manifest),
                    Err(_) => layers::Usage {
                        own: s.size_bytes,
                        shared: 0,
                    },
                };
                Snapshot {
                    vm: name.into(),
                    name: s.name,
                    size_bytes: usage.own,
                    shared_bytes: usage.shared,
                    created_at: s.created_at,
                }
            })
            .collect())
    }

    /// `vm snapshot delete`: the row, then the directory. The disk layers
    /// it froze stay while the VM's disks are built on them.
    pub async fn delete_snapshot(&self, name: &str, snap: &str) -> Result<(), Error> {
        banger_api::validate_snapshot_name(snap).map_err(|p| Error::invalid("snapshot", p))?;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        self.remove_snapshot(name, snap)
    }

    /// The record of `name`, which must be running (snapshot, fork).
    pub(super) fn running_record(&self, name: &str) -> Result<VmRecord, Error> {
        let vm = self.record(name)?;
        let state = self.show(name)?.state;
        if state != VmState::Running {
            return Err(Error::WrongState {
                name: name.into(),
                state,
                action: Action::Use,
            });
        }
        Ok(vm)
    }

    /// [`Lifecycle::delete_snapshot`]'s work, under the VM's lock, for any
    /// name (a fork's own included).
    pub(super) fn remove_snapshot(&self, name: &str, snap: &str) -> Result<(), Error> {
        let vm = self.record(name)?;
        let dir = self.dir(&vm);
        let path = layers::snapshot_dir(&dir, snap);
        let had_row = self.store.delete_snapshot(&vm.id, snap)?;
        if !had_row && !path.exists() {
            return Err(Error::SnapshotNotFound {
                vm: name.into(),
                name: snap.into(),
            });
        }
        crate::layout::remove_dir_if_present(&path)
            .map_err(Error::io(format!("cannot remove {}", path.display())))?;
        // The disk layers only it kept go with it.
        if let Err(e) = layers::collect(&dir) {
            tracing::warn!(vm = %name, error = %e, "cannot remove unneeded disk layers");
        }
        Ok(())
    }
}

/// The writable drives as they are now: root and work, on their tops.
pub(super) fn writable_drives(engine: &dyn Engine, dir: &VmDir) -> Result<Vec<Drive>, Error> {
    let mut drives = vec![engine.root_drive(dir)];
    if dir.work_disk().exists() {
        drives.push(Drive {
            path: dir.work_disk(),
            format: DriveFormat::Raw,
            serial: banger_proto::WORK_DRIVE_SERIAL,
            read_only: false,
        });
    }
    let tops = Tops::load(dir).map_err(Error::io(format!(
        "cannot read {}",
        dir.file(layers::TOPS).display()
    )))?;
    tops.apply(dir, &mut drives);
    Ok(drives)
}

/// Step 1: a new layer over every writable drive's top, recorded as its
/// top; returns the switches for the engine and the layers it freezes.
fn new_layers(
    vm: &VmRecord,
    engine: &dyn Engine,
    dir: &VmDir,
) -> Result<(Vec<Switch>, BTreeMap<String, LayerRef>), Error> {
    let mut tops = Tops::load(dir).map_err(Error::io(format!(
        "cannot read {}",
        dir.file(layers::TOPS).display()
    )))?;
    let mut switches = Vec::new();
    let mut frozen = BTreeMap::new();
    for d in writable_drives(engine, dir)? {
        let current = Layer {
            path: d.path.clone(),
            format: d.format,
        };
        let overlay = layers::new_layer_path(dir, d.serial).map_err(Error::io(format!(
            "cannot make {}/layers",
            dir.state.display()
        )))?;
        engine.create_layer(&current, &overlay)?;
        let top = Layer {
            path: overlay.clone(),
            format: DriveFormat::Qcow2,
        };
        let (Some(frozen_ref), Some(top_ref)) =
            (LayerRef::of(dir, &current), LayerRef::of(dir, &top))
        else {
            return Err(Error::Refused {
                what: format!("vm {:?} has a disk outside its state dir", vm.name),
                hint: "snapshots keep only disks in the vm's own directory".into(),
            });
        };
        layers::record_below(dir, &top_ref, &frozen_ref).map_err(Error::io(format!(
            "cannot write {}",
            dir.file(layers::BELOW).display()
        )))?;
        frozen.insert(d.serial.to_string(), frozen_ref);
        tops.0.insert(d.serial.to_string(), top_ref);
        switches.push(Switch {
            current: current.path,
            overlay,
        });
    }
    tops.save(dir).map_err(Error::io(format!(
        "cannot write {}",
        dir.file(layers::TOPS).display()
    )))?;
    Ok((switches, frozen))
}
