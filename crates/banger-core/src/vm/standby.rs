//! Standbys: the next VM of a warm image, made ahead and paused.
//!
//! Restoring a warm snapshot is most of the cost of a warm create, and
//! under TCG most of a restore is the guest's code being translated again
//! the first time it runs: the identity the agent applies, the first exec.
//! A standby pays all of that before anyone asks. After a create that used
//! an image's warm snapshot (and in `image warm`, which returns once it is
//! ready, so `image warm && vm run` takes it), the daemon makes one
//! more VM from that snapshot with the same request (`standby-<hex>`,
//! marked [`STANDBY`] in its options and hidden from `vm list`): restored,
//! given an identity of its own, made to run `true` once, then paused by
//! the engine (its vCPUs stopped: it costs no CPU while it waits, only the
//! memory its guest wrote since the snapshot).
//!
//! The next create whose planned VM fits it (same image, machine, network
//! mode, options, and the same warm snapshot) takes it instead of
//! restoring: in one store transaction the standby's row takes the
//! create's name (keeping its id, so its directories, MAC and address
//! lease) and is `creating` again until the create ends (a daemon killed
//! meanwhile leaves a VM reconcile removes, as any interrupted create);
//! every capability's `rename` moves what it keyed by the old name
//! (the DNS name) and refreshes its part of the guest config; the engine
//! resumes the guest; and the create's `identity` stage gives it its name,
//! hostname, address, clock, RNG reseed, sshd host key and git identity,
//! as after any restore. A create that finds a standby still being made
//! for it waits for it (it is ahead of a restore begun now). Anything
//! wrong with a standby (gone, dead, failed mid-take) makes the create
//! delete it and restore the warm snapshot as if there had been none.
//!
//! One per image at most; `warm_standby = false` turns them off. A new
//! warm snapshot, its removal, the image's deletion, a create finding the
//! warm snapshot stale and the daemon's shutdown delete the image's
//! standbys; reconcile deletes any a killed daemon left.

use super::Lifecycle;
use crate::capability::Ctx;
use crate::error::Error;
use crate::ops::Op;
use crate::store::VmRecord;
use banger_api::{CreateVm, NetworkMode, OperationKind, VmState};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The key in a standby's options (its value: the image).
pub const STANDBY: &str = "standby";

/// What a standby must share with a VM to become it: all a create plans
/// but the name and what follows from the id (directories, MAC, address,
/// user mode's ssh port), and the warm snapshot it was restored from. Only
/// requests without `--publish` have standbys (a standby holding the host
/// ports asked for would keep them from the VM that asked).
#[derive(Debug, Clone, PartialEq)]
struct Fit {
    image: String,
    cpus: u32,
    memory_mib: u64,
    disk_size_mib: u64,
    network: NetworkMode,
    engine: banger_api::EngineKind,
    options: std::collections::BTreeMap<String, serde_json::Value>,
    warm_made: i64,
}

impl Fit {
    fn of(vm: &VmRecord, warm_made: i64) -> Fit {
        let mut options = vm.options.clone();
        options.remove(STANDBY);
        Fit {
            image: vm.image.clone(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            disk_size_mib: vm.disk_size_mib,
            network: vm.network,
            engine: vm.engine,
            options,
            warm_made,
        }
    }
}

enum Slot {
    /// Being made: `done` turns true when it is ready or failed.
    Making {
        fit: Fit,
        done: watch::Receiver<bool>,
    },
    Ready {
        fit: Fit,
        name: String,
    },
}

/// The standbys by image.
#[derive(Default)]
pub struct Standbys {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Standbys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// When the warm snapshot in `dir` was made (0 when unreadable).
fn warm_made(dir: &std::path::Path) -> i64 {
    super::warm::read_manifest(dir).map_or(0, |m| m.created_at)
}

impl Lifecycle {
    /// Whether `vm` is a standby (hidden from listings).
    pub fn is_standby(vm: &VmRecord) -> bool {
        vm.options.contains_key(STANDBY)
    }

    /// Whether `image` has a standby: `ready` or `making`.
    pub fn standby_state(&self, image: &str) -> Option<&'static str> {
        match self.standbys.lock().get(image)? {
            Slot::Making { .. } => Some("making"),
            Slot::Ready { .. } => Some("ready"),
        }
    }

    /// The ready standby that fits `vm` (planned from `req`), restored
    /// from the warm snapshot in `warm`, taken out of its slot; waits for
    /// one being made that fits.
    pub(super) async fn take_standby(
        &self,
        req: &CreateVm,
        vm: &VmRecord,
        warm: &std::path::Path,
    ) -> Option<String> {
        if !req.publish.is_empty() {
            return None;
        }
        let want = Fit::of(vm, warm_made(warm));
        loop {
            let mut done = {
                let mut slots = self.standbys.lock();
                match slots.get(&vm.image) {
                    Some(Slot::Ready { fit, .. }) if *fit == want => {
                        let Some(Slot::Ready { name, .. }) = slots.remove(&vm.image) else {
                            unreachable!("matched above")
                        };
                        return Some(name);
                    }
                    Some(Slot::Making { fit, done }) if *fit == want => done.clone(),
                    _ => return None,
                }
            };
            let wait = Duration::from_secs(self.config.boot_timeout_secs);
            if tokio::time::timeout(wait, done.wait_for(|d| *d))
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Begins making a standby for the next create like `req` (restored
    /// from the warm snapshot in `warm`) unless standbys are off, `req`
    /// publishes ports, or the image has one that fits already; returns
    /// the operation making it.
    pub(super) fn refill_standby(
        self: &Arc<Self>,
        req: &CreateVm,
        warm: &std::path::Path,
    ) -> Option<Arc<Op>> {
        if !self.config.warm_standby || !req.publish.is_empty() {
            return None;
        }
        let standby = match self.plan_standby(req) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(image = ?req.image, error = %crate::error::chain(&e), "cannot plan a standby");
                return None;
            }
        };
        let fit = Fit::of(&standby, warm_made(warm));
        let (tx, done) = watch::channel(false);
        let stale = {
            let mut slots = self.standbys.lock();
            match slots.get(&standby.image) {
                Some(Slot::Making { fit: f, .. }) | Some(Slot::Ready { fit: f, .. })
                    if *f == fit =>
                {
                    return None;
                }
                // A standby of another shape gives way to the latest request.
                _ => slots.insert(
                    standby.image.clone(),
                    Slot::Making {
                        fit: fit.clone(),
                        done,
                    },
                ),
            }
        };
        if let Some(Slot::Ready { name, .. }) = stale {
            self.clone().discard(name);
        }
        let this = self.clone();
        let warm = warm.to_path_buf();
        let op = self
            .ops
            .spawn(OperationKind::Standby, &standby.image.clone(), |op| async move {
                let made = this.make_standby(&op, &standby, &warm, &tx).await;
                let kept = {
                    let mut slots = this.standbys.lock();
                    // Still wanted: no discard or other shape took the slot meanwhile.
                    let wanted = matches!(slots.get(&standby.image), Some(Slot::Making { fit: f, .. }) if *f == fit);
                    match (&made, wanted) {
                        (Ok(()), true) => {
                            let name = standby.name.clone();
                            slots.insert(standby.image.clone(), Slot::Ready { fit, name });
                        }
                        (Err(_), true) => drop(slots.remove(&standby.image)),
                        (_, false) => {}
                    }
                    wanted
                };
                if made.is_ok() && !kept {
                    this.run_delete(&op, &standby.name).await?;
                }
                // Whoever waits sees it ready, failed or gone.
                let _ = tx.send(true);
                made
            });
        Some(op)
    }

    /// A standby's record: planned from `req` under a name of its own.
    fn plan_standby(&self, req: &CreateVm) -> Result<VmRecord, Error> {
        let name = format!("standby-{:08x}", rand::random::<u32>());
        let mut standby = self.plan_vm(&CreateVm {
            name: Some(name),
            ..req.clone()
        })?;
        let image = standby.image.clone();
        standby
            .options
            .insert(STANDBY.into(), serde_json::Value::String(image));
        Ok(standby)
    }

    /// Restores `standby` from the warm snapshot, runs `true` in it once
    /// and pauses it; on failure nothing of it is left. A create waiting
    /// for it (`done`'s receivers beyond the slot's own) takes it as soon
    /// as it has its identity: the rest is for a standby that waits.
    async fn make_standby(
        &self,
        op: &Op,
        standby: &VmRecord,
        warm: &std::path::Path,
        done: &watch::Sender<bool>,
    ) -> Result<(), Error> {
        self.store.insert_vm(standby)?;
        {
            let lock = self.lock(&standby.name);
            let _guard = lock.lock().await;
            let source = super::clone::Source::Warm {
                dir: warm.to_path_buf(),
                image: standby.image.clone(),
            };
            self.run_create_from(op, standby, source).await?;
        }
        if done.receiver_count() > 1 {
            return Ok(());
        }
        let settled = async {
            let agent = self.agent(&standby.name).await?;
            op.stage("settle", "run a first command", async {
                agent
                    .run(&["true"], None, &[], 0)
                    .await
                    .map(drop)
                    .map_err(Error::from)
            })
            .await?;
            let running = self
                .runtime
                .get(&standby.name)
                .ok_or_else(|| Error::VmNotFound {
                    name: standby.name.clone(),
                })?;
            op.stage("pause", "pause the guest", async {
                Ok::<_, Error>(self.engine(standby)?.pause(&running.handles).await?)
            })
            .await
        };
        let result = settled.await;
        if result.is_err() {
            let _ = self.run_delete(op, &standby.name).await;
        }
        result
    }

    /// Deletes standby `name` in the background.
    fn discard(self: Arc<Self>, name: String) {
        tokio::spawn(async move { self.delete_standby(&name).await });
    }

    /// Deletes standby `name`, as a delete operation of its own.
    async fn delete_standby(&self, name: &str) {
        let op = self.ops.begin(OperationKind::Delete, name);
        let result = self.run_delete(&op, name).await;
        if let Err(e) = &result {
            tracing::warn!(vm = %name, error = %crate::error::chain(e), "cannot delete a standby");
        }
        self.ops.finish(&op, result);
    }

    /// Deletes the standbys of `image` (of every image: `None`), ready or
    /// being made, and waits for it.
    pub async fn discard_standbys(&self, image: Option<&str>) {
        let making: Vec<watch::Receiver<bool>> = {
            let mut slots = self.standbys.lock();
            let gone = |i: &String| image.is_none_or(|want| want == i);
            let making = slots
                .iter()
                .filter(|(i, _)| gone(i))
                .filter_map(|(_, slot)| match slot {
                    Slot::Making { done, .. } => Some(done.clone()),
                    Slot::Ready { .. } => None,
                })
                .collect();
            slots.retain(|i, _| !gone(i));
            making
        };
        // One being made deletes itself once it finds its slot gone.
        let wait = Duration::from_secs(self.config.boot_timeout_secs);
        for mut done in making {
            let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        }
        let names: Vec<String> = self
            .store
            .vms()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| {
                v.options
                    .get(STANDBY)
                    .is_some_and(|i| image.is_none_or(|want| i == want))
            })
            .map(|v| v.name)
            .collect();
        for name in names {
            self.delete_standby(&name).await;
        }
    }

    /// Makes the standby `standby` the VM `vm` reserved by a create (see
    /// the module's doc); on failure the standby is deleted and the
    /// reserved row is back as it was.
    pub(super) async fn adopt(&self, op: &Op, vm: &VmRecord, standby: &str) -> Result<(), Error> {
        let lock = self.lock(standby);
        let _guard = lock.lock().await;
        let alive = self.runtime.get(standby).filter(|r| {
            self.engines
                .get(r.engine)
                .is_ok_and(|e| e.alive(&r.handles))
        });
        let Some(running) = alive else {
            if self.store.vm(standby)?.is_some() {
                let _ = self.delete_locked(op, standby).await;
            }
            return Err(Error::Guest(format!("standby {standby} is not running")));
        };
        let taken = op
            .stage("standby", "take the standby", async {
                let now = banger_sys::clock::unix_now();
                Ok::<_, Error>(self.store.take_over_vm(&vm.name, standby, STANDBY, now)?)
            })
            .await?;
        if !taken {
            return Err(Error::Guest(format!("standby {standby} is gone")));
        }
        self.runtime.rename(standby, &vm.name);
        let result = self.wake(op, vm, standby, &running).await;
        if let Err(e) = &result {
            tracing::warn!(vm = %vm.name, standby, error = %crate::error::chain(e), "the standby failed as it was taken; deleting it");
            let _ = self.delete_locked(op, &vm.name).await;
            if let Err(e) = self.store.insert_vm(vm) {
                tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "cannot reserve the name again");
            }
        }
        result
    }

    /// A taken standby made the VM it now is: renamed, resumed, its
    /// identity given.
    async fn wake(
        &self,
        op: &Op,
        vm: &VmRecord,
        standby: &str,
        running: &super::runtime::Running,
    ) -> Result<(), Error> {
        let made = self.record(&vm.name)?;
        let image = self.images.record(&made.image)?;
        let dir = self.dir(&made);
        let ctx = Ctx {
            vm: &made,
            image: &image,
            dir: &dir,
        };
        let drive = dir.config_drive();
        let mut guest = std::fs::read(&drive)
            .and_then(|b| banger_proto::GuestConfig::from_drive(&b))
            .map_err(Error::io(format!("cannot read {}", drive.display())))?;
        guest.vm_name = made.name.clone();
        guest.hostname = made.name.clone();
        for cap in self.capabilities.for_vm(&made) {
            cap.rename(&ctx, standby, &mut guest).await?;
        }
        let engine = self.engine(&made)?;
        engine.resume(&running.handles).await?;
        let agent = running
            .agent
            .clone()
            .filter(|a| !a.is_closed())
            .ok_or_else(|| Error::Guest(format!("standby {standby} lost its agent session")))?;
        self.guest_ready(op, &ctx, Some(&guest), &agent).await?;
        Ok(self
            .store
            .set_vm_state(&made.name, VmState::Running, None)?)
    }
}
