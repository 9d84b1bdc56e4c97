//! `vm restore VM SNAPSHOT`: the VM back at the moment of the snapshot,
//! processes, sessions and open files in the guest as they were. Under the
//! VM's lock, in stages:
//!
//! 1. `stop`: a running engine is stopped without asking the guest (its
//!    state is being thrown away), its boot's host side released, the VM
//!    recorded stopped;
//! 2. `layers`: a new empty layer over each disk layer the snapshot froze,
//!    recorded as the drives' tops; the tops they replace are removed
//!    (nothing is built on a top), with what only they needed
//!    (`layers::collect`);
//! 3. the boot sequence (`boot.rs`: prepare, config, engine, agent) with
//!    the engine restored from the snapshot instead of booted: its RAM a
//!    copy of the snapshot's, so the snapshot can be restored again.
//!
//! A failure unwinds the boot and records the VM failed, like a start.

use super::Lifecycle;
use super::layers::{self, LayerRef, Manifest, Tops};
use crate::engine::{DriveFormat, Engine, EngineError, Layer, RamMapping};
use crate::error::{Action, Error};
use crate::layout::VmDir;
use crate::ops::Op;
use banger_api::{OperationKind, RestoreSnapshot, VmState};
use std::sync::Arc;
use std::time::Duration;

impl Lifecycle {
    /// `vm restore`: begins the operation and returns it at once.
    pub fn restore(self: &Arc<Self>, name: &str, req: RestoreSnapshot) -> Result<Arc<Op>, Error> {
        let vm = self.record(name)?;
        if matches!(vm.state, VmState::Creating | VmState::Deleting) {
            return Err(Error::WrongState {
                name: name.into(),
                state: vm.state,
                action: Action::Start,
            });
        }
        if !self
            .store
            .snapshots(&vm.id)?
            .iter()
            .any(|s| s.name == req.snapshot)
        {
            return Err(Error::SnapshotNotFound {
                vm: name.into(),
                name: req.snapshot,
            });
        }
        let (this, name, snap) = (self.clone(), name.to_string(), req.snapshot);
        Ok(self
            .ops
            .spawn(OperationKind::Restore, &name.clone(), |op| async move {
                this.run_restore(&op, &name, &snap).await
            }))
    }

    async fn run_restore(&self, op: &Op, name: &str, snap: &str) -> Result<(), Error> {
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let vm = self.record(name)?;
        let engine = self.engine(&vm)?;
        let dir = self.dir(&vm);
        self.sweep_snapshots(&vm, &dir)?;
        let from = layers::snapshot_dir(&dir, snap);
        let manifest = layers::read_manifest(&from).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::SnapshotNotFound {
                    vm: name.into(),
                    name: snap.into(),
                }
            } else {
                Error::Engine(EngineError::BadSnapshot {
                    dir: from.clone(),
                    problem: e.to_string(),
                })
            }
        })?;
        check_fits(&vm, &*engine, &manifest)?;
        let image = self.images.record(&vm.image)?;
        if let Some(r) = self.runtime.get(name)
            && engine.alive(&r.handles)
        {
            op.stage("stop", "stop engine", async {
                engine.stop(&r.handles, Duration::from_secs(2)).await?;
                Ok::<_, Error>(())
            })
            .await?;
        }
        if self.runtime.get(name).is_some() {
            self.release_runtime(&vm);
        }
        if vm.state == VmState::Running {
            self.store.set_vm_state(name, VmState::Stopped, None)?;
        }
        op.stage("layers", "disk layers from the snapshot", async {
            layers_from(&*engine, &dir, &manifest)
        })
        .await?;
        self.boot_recorded(op, &vm, &image, Some((&from, RamMapping::Copy)))
            .await?;
        tracing::info!(vm = %name, snapshot = %snap, "restored");
        Ok(())
    }
}

/// A snapshot restores only into the machine it was taken of.
fn check_fits(vm: &crate::store::VmRecord, engine: &dyn Engine, m: &Manifest) -> Result<(), Error> {
    let problem = if m.vm_id != vm.id {
        Some("was taken of another vm".to_string())
    } else if m.engine != engine.kind().as_str() {
        Some(format!("was taken with the {} engine", m.engine))
    } else if m.cpus != vm.cpus || m.memory_mib != vm.memory_mib {
        Some(format!(
            "was taken with {} cpus and {} MiB, the vm now has {} and {}",
            m.cpus, m.memory_mib, vm.cpus, vm.memory_mib
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Err(Error::Refused {
            what: format!("snapshot {:?} of vm {:?} {p}", m.name, vm.name),
            hint: "take a new snapshot of the vm as it is".into(),
        }),
        None => Ok(()),
    }
}

/// Step 2: new tops over the snapshot's frozen layers.
pub(super) fn layers_from(engine: &dyn Engine, dir: &VmDir, m: &Manifest) -> Result<(), Error> {
    let mut tops = Tops::default();
    for (serial, frozen) in &m.layers {
        let base = frozen.resolve(dir).ok_or_else(|| {
            Error::Engine(EngineError::BadSnapshot {
                dir: layers::snapshot_dir(dir, &m.name),
                problem: format!("layer {:?} is outside the vm's dir", frozen.file),
            })
        })?;
        if !base.path.exists() {
            return Err(Error::Engine(EngineError::BadSnapshot {
                dir: layers::snapshot_dir(dir, &m.name),
                problem: format!("its disk layer {} is gone", base.path.display()),
            }));
        }
        let overlay = layers::new_layer_path(dir, serial).map_err(Error::io(format!(
            "cannot make {}/layers",
            dir.state.display()
        )))?;
        engine.create_layer(&base, &overlay)?;
        let top = LayerRef::of(
            dir,
            &Layer {
                path: overlay,
                format: DriveFormat::Qcow2,
            },
        )
        .expect("a new layer is in the vm's dir");
        layers::record_below(dir, &top, frozen).map_err(Error::io(format!(
            "cannot write {}",
            dir.file(layers::BELOW).display()
        )))?;
        tops.0.insert(serial.clone(), top);
    }
    tops.save(dir).map_err(Error::io(format!(
        "cannot write {}",
        dir.file(layers::TOPS).display()
    )))?;
    // The old tops (nothing is built on a top) and what only they needed go.
    if let Err(e) = layers::collect(dir) {
        tracing::warn!(dir = %dir.state.display(), error = %e, "cannot remove unneeded disk layers");
    }
    Ok(())
}
