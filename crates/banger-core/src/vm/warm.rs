//! Warm images: a VM restored instead of booted when nothing about it
//! needs a boot.
//!
//! `image warm NAME` (an operation, target the image) boots the image once
//! as a VM with the default resources (named `warm-<image>-<hex>`, marked
//! in its options so reconcile removes it if the daemon dies mid-way),
//! snapshots it with `--stop` the moment its agent answers (in an image
//! with sshd, once sshd has first started: its first-boot host key is made
//! by then), and keeps that snapshot as the image's warm snapshot in
//! `<state>/warm/<image>/`:
//!
//! - `root.qcow2`: what the boot changed on the root disk, over the
//!   image's rootfs; `work.img`: the work disk (sparse);
//! - the engine's device state and RAM (`engine::snapshot`'s files);
//! - `warm.json`: the machine it was made for (CPUs, memory, disk size,
//!   network mode, engine) and its fingerprints: the image (its files'
//!   digests and build time), the engine program and version, the
//!   accelerator, banger itself (its version and daemon binary, which
//!   carries the agent and the machine layout), and the kernel command
//!   line its guest booted with (config `tcg_aslr` changes it; a restored
//!   guest keeps the one it booted with).
//!
//! It is staged beside the old one and swapped in by rename, under the
//! lock `warm:<image>`, which creates also take while they copy from it.
//!
//! `vm create` and `vm run` (without `--cold` or `--from-snapshot`) use it
//! when the VM asks for exactly that machine and every fingerprint still
//! holds: the VM's disks are copied from it (a few MB), its RAM mapped
//! privately (every VM from one warm snapshot shares the pages none of
//! them wrote), and the identity stage makes the guest its own
//! (`vm/clone.rs` does the rest). Otherwise the VM boots, and the create's
//! `warm` stage says why (shown by `--verbose`).

use super::Lifecycle;
use super::layers;
use crate::engine::{DriveFormat, Engine, Layer};
use crate::error::Error;
use crate::ops::Op;
use crate::store::{ImageRecord, VmRecord};
use banger_api::{CreateVm, EngineKind, NetworkMode, OperationKind, WarmImage};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where warm snapshots live, under the state dir.
pub const WARM_DIR: &str = "warm";
/// The key in a warming VM's options (its value: the image).
pub const WARMING: &str = "warming";
pub const MANIFEST: &str = "warm.json";
pub const ROOT: &str = "root.qcow2";
pub const WORK: &str = "work.img";
/// The snapshot the warming VM takes.
const SNAPSHOT: &str = "warm";

/// What a warm snapshot depends on; any change makes it stale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub image: String,
    pub engine: String,
    pub accel: String,
    pub banger: String,
    /// The kernel command line its guest booted with (config `tcg_aslr`
    /// and the image's arguments reach it); a restored guest keeps it.
    /// Manifests from before it was recorded read as "" and are stale.
    #[serde(default)]
    pub cmdline: String,
}

impl Fingerprint {
    /// Why a snapshot made under `self` cannot run under `now`, if so.
    pub fn stale(&self, now: &Fingerprint) -> Option<String> {
        if self.image != now.image {
            Some("the image was rebuilt since".into())
        } else if self.banger != now.banger {
            Some("banger (daemon, agent or machine layout) changed since".into())
        } else if self.engine != now.engine {
            Some(format!(
                "the engine changed since (was {}, now {})",
                self.engine, now.engine
            ))
        } else if self.accel != now.accel {
            Some(format!(
                "it was made under {}, and VMs now run under {}",
                self.accel, now.accel
            ))
        } else if self.cmdline != now.cmdline {
            Some(format!(
                "its guest booted with the kernel command line `{}`, and VMs now boot with `{}`",
                self.cmdline, now.cmdline
            ))
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarmManifest {
    pub version: u32,
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_size_mib: u64,
    pub network: NetworkMode,
    pub engine: EngineKind,
    pub created_at: i64,
    pub fingerprint: Fingerprint,
}

impl WarmManifest {
    /// Why a VM `vm` cannot start from this one, if so.
    pub fn misfit(&self, vm: &VmRecord) -> Option<String> {
        let mut differ = Vec::new();
        if vm.cpus != self.cpus {
            differ.push(format!("{} cpus (warm: {})", vm.cpus, self.cpus));
        }
        if vm.memory_mib != self.memory_mib {
            differ.push(format!(
                "{} MiB memory (warm: {})",
                vm.memory_mib, self.memory_mib
            ));
        }
        if vm.disk_size_mib != self.disk_size_mib {
            differ.push(format!(
                "{} MiB disk (warm: {})",
                vm.disk_size_mib, self.disk_size_mib
            ));
        }
        if vm.network != self.network {
            differ.push(format!("network {} (warm: {})", vm.network, self.network));
        }
        if vm.engine != self.engine {
            differ.push(format!(
                "engine {} (warm: {})",
                vm.engine.as_str(),
                self.engine.as_str()
            ));
        }
        (!differ.is_empty()).then(|| format!("this vm asks for {}", differ.join(", ")))
    }
}

pub fn read_manifest(dir: &Path) -> std::io::Result<WarmManifest> {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST))?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Whether the image's guests run sshd, as its manifest's installed
/// packages say (a registered image lists none: no).
fn has_sshd(image: &ImageRecord) -> bool {
    serde_json::from_str::<serde_json::Value>(&image.manifest)
        .ok()
        .is_some_and(|m| m["installed"].get("openssh-server").is_some())
}

/// The image's identity: its build time and its files' digests (the
/// agent is inside its rootfs).
fn image_fingerprint(image: &ImageRecord) -> String {
    let digest = sha2::Sha256::digest(image.manifest.as_bytes());
    format!(
        "{} {}",
        image.created_at,
        digest
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// banger's identity: its version and the daemon binary (size and time).
fn banger_fingerprint() -> String {
    use std::os::unix::fs::MetadataExt;
    let exe = std::fs::metadata("/proc/self/exe")
        .map(|m| format!("{} {}.{}", m.size(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_default();
    format!("{} {exe}", env!("CARGO_PKG_VERSION"))
}

impl Lifecycle {
    pub(super) fn warm_dir(&self, image: &str) -> PathBuf {
        self.paths.state_dir.join(WARM_DIR).join(image)
    }

    fn warm_lock(&self, image: &str) -> Arc<tokio::sync::Mutex<()>> {
        // VM names have no ':', so this never is one's lock.
        self.lock(&format!("warm:{image}"))
    }

    /// The fingerprints a warm snapshot of `image` would be made under now;
    /// `None` while the accelerator is undecided (it takes a probe boot).
    async fn fingerprint(&self, image: &ImageRecord, engine: &dyn Engine) -> Option<Fingerprint> {
        let kernel = self.images.kernel(image).ok()?;
        if engine.accel_needs_probe(&kernel) {
            return None;
        }
        let (accel, _) = engine.accel(&kernel).await;
        let engine_version = {
            let engine = self.engine_for(engine.kind())?;
            tokio::task::spawn_blocking(move || engine.version())
                .await
                .ok()?
        };
        Some(Fingerprint {
            image: image_fingerprint(image),
            engine: engine_version,
            accel: accel.as_str().into(),
            banger: banger_fingerprint(),
            cmdline: crate::engine::qemu::cmdline(
                accel,
                banger_sys::process::tsc_khz(),
                self.config.tcg_aslr,
                &super::boot::image_cmdline(image),
            ),
        })
    }

    fn engine_for(&self, kind: EngineKind) -> Option<Arc<dyn Engine>> {
        self.engines.get(kind).ok()
    }

    /// The image's warm snapshot for `vm`, or why there is none that fits.
    pub(super) async fn warm_for(&self, vm: &VmRecord) -> Result<PathBuf, String> {
        let dir = self.warm_dir(&vm.image);
        let manifest = match read_manifest(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "image {0} has no warm snapshot (`banger image warm {0}` makes one)",
                    vm.image
                ));
            }
            Err(e) => return Err(format!("its warm snapshot is unreadable: {e}")),
        };
        if let Some(why) = manifest.misfit(vm) {
            return Err(format!("the warm snapshot does not fit: {why}"));
        }
        let image = self.images.record(&vm.image).map_err(|e| e.to_string())?;
        let engine = self.engine(vm).map_err(|e| e.to_string())?;
        let now = self
            .fingerprint(&image, &*engine)
            .await
            .ok_or("the accelerator is not decided yet (the first boot probes it)")?;
        if let Some(why) = manifest.fingerprint.stale(&now) {
            // Its standby came from it: no VM will take it.
            if self.standby_state(&vm.image).is_some() {
                self.discard_standbys(Some(&vm.image)).await;
            }
            return Err(format!(
                "the warm snapshot is stale: {why} (`banger image warm {}` makes a new one)",
                vm.image
            ));
        }
        Ok(dir)
    }

    /// The warm snapshot as `image list|show` shows it.
    pub async fn warm_view(&self, image: &ImageRecord) -> Option<WarmImage> {
        let dir = self.warm_dir(&image.name);
        let m = read_manifest(&dir).ok()?;
        let stale = match self.engine_for(m.engine) {
            Some(engine) => match self.fingerprint(image, &*engine).await {
                Some(now) => m.fingerprint.stale(&now),
                None => None,
            },
            None => Some(format!("engine {} is not available", m.engine.as_str())),
        };
        Some(WarmImage {
            cpus: m.cpus,
            memory_mib: m.memory_mib,
            disk_size_mib: m.disk_size_mib,
            network: m.network,
            engine: m.engine,
            created_at: m.created_at,
            size_bytes: layers::allocated(&dir),
            stale,
            standby: self.standby_state(&image.name).map(Into::into),
        })
    }

    /// `image` with its warm snapshot, if it has one.
    pub async fn with_warm(&self, mut image: banger_api::Image) -> banger_api::Image {
        if let Ok(rec) = self.images.record(&image.name) {
            image.warm = self.warm_view(&rec).await;
        }
        image
    }

    /// Removes `image`'s warm snapshot; whether it had one.
    pub async fn unwarm(&self, image: &str) -> Result<bool, Error> {
        banger_api::validate_image_name(image).map_err(|p| Error::invalid("image", p))?;
        self.discard_standbys(Some(image)).await;
        let lock = self.warm_lock(image);
        let _guard = lock.lock().await;
        let dir = self.warm_dir(image);
        let had = dir.exists();
        crate::layout::remove_dir_if_present(&dir)
            .map_err(Error::io(format!("cannot remove {}", dir.display())))?;
        Ok(had)
    }

    /// Removes what an interrupted `image warm` left in the warm dir.
    pub fn sweep_warm(&self) {
        let root = self.paths.state_dir.join(WARM_DIR);
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && (name.contains(".new-") || name.contains(".old-")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// `image warm NAME`: begins the operation.
    pub fn warm_image(self: &Arc<Self>, image: &str) -> Result<Arc<Op>, Error> {
        banger_api::validate_image_name(image).map_err(|p| Error::invalid("image", p))?;
        let build_first = self.images.needs_build(image)?;
        let suffix = format!("-{:04x}", rand::random::<u16>());
        let stem: String = format!("warm-{image}")
            .chars()
            .take(63 - suffix.len())
            .collect();
        let mut vm = self.plan_vm(&CreateVm {
            name: Some(format!("{}{suffix}", stem.trim_end_matches('-'))),
            image: Some(image.into()),
            ..Default::default()
        })?;
        vm.options
            .insert(WARMING.into(), serde_json::Value::String(image.into()));
        // RAM and disk changes go to the state disk.
        let need = crate::space::ROOM + (vm.memory_mib << 20);
        crate::space::ensure(&self.paths.state_dir, need, "warming an image")?;
        let this = self.clone();
        Ok(self
            .ops
            .spawn(OperationKind::ImageWarm, image, |op| async move {
                if let Some(agent_bin) = build_first {
                    this.images.ensure_preset(&op, &vm.image, agent_bin).await?;
                }
                this.store.insert_vm(&vm)?;
                let result = this.run_warm(&op, &vm).await;
                // The warming VM goes whatever happened.
                if this.store.vm(&vm.name).ok().flatten().is_some()
                    && let Err(e) = this.run_delete(&op, &vm.name).await
                {
                    tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "cannot delete the warming vm");
                }
                if result.is_ok() {
                    // Standbys of the old snapshot give way to one of the new.
                    this.discard_standbys(Some(&vm.image)).await;
                    let default = CreateVm {
                        image: Some(vm.image.clone()),
                        ..Default::default()
                    };
                    if let Some(standby) = this.refill_standby(&default, &this.warm_dir(&vm.image)) {
                        this.await_standby(&op, &standby).await;
                    }
                }
                result.map_err(|e| crate::space::explain(e, &this.paths.state_dir, "warming an image"))
            }))
    }

    /// Stage `standby`: waits for the image's first standby, so the `vm
    /// run` that follows `image warm` finds it ready instead of waiting
    /// for it. A standby that fails only says so: the warm snapshot holds.
    async fn await_standby(&self, op: &Op, standby: &Op) {
        let t0 = op.begin_stage("standby", "make the image's next vm ready");
        let wait = Duration::from_secs(self.config.boot_timeout_secs);
        let detail = match tokio::time::timeout(wait, standby.wait()).await {
            Ok(done) => match done.error {
                None => "ready: the next fitting vm create or vm run resumes it".to_string(),
                Some(e) => format!(
                    "not made ({}): creates restore the warm snapshot",
                    e.message
                ),
            },
            Err(_) => format!("not ready within {wait:?}: the next create waits for it"),
        };
        op.end_stage("standby", t0, None, Some(detail));
    }

    async fn run_warm(&self, op: &Op, vm: &VmRecord) -> Result<(), Error> {
        {
            let lock = self.lock(&vm.name);
            let _guard = lock.lock().await;
            self.run_create(op, vm).await?;
        }
        // A guest with sshd makes its host key and starts sshd in the
        // background of its first boot: done before the snapshot, so no
        // restored guest pays for it again (its own key is then one
        // install and a SIGHUP).
        if has_sshd(&self.images.record(&vm.image)?) {
            op.stage("settle", "wait for sshd's first start", async {
                if let Err(e) = self.wait_for_sshd(&vm.name, Duration::from_secs(60)).await {
                    tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "sshd did not start in the warming vm; snapshotting it as it is");
                }
                Ok::<_, Error>(())
            })
            .await?;
        }
        self.run_snapshot(op, &vm.name, SNAPSHOT, true).await?;
        let made = self.record(&vm.name)?;
        let image = self.images.record(&vm.image)?;
        let engine = self.engine(&made)?;
        let fingerprint = self.fingerprint(&image, &*engine).await.ok_or_else(|| {
            Error::Guest("the accelerator is still undecided after a boot".into())
        })?;
        let lock = self.warm_lock(&vm.image);
        let _guard = lock.lock().await;
        op.stage("keep", "keep the warm snapshot", async {
            self.sweep_warm();
            let dir = self.warm_dir(&vm.image);
            let parent = dir.parent().expect("warm dir has a parent").to_path_buf();
            make_private_dir(&parent)
                .map_err(Error::io(format!("cannot create {}", parent.display())))?;
            let staging = parent.join(format!(".{}.new-{:08x}", vm.image, rand::random::<u32>()));
            let vdir = self.dir(&made);
            let snap = layers::snapshot_dir(&vdir, SNAPSHOT);
            let kept = self
                .export_warm(&made, &image, &*engine, &snap, &staging)
                .await
                .and_then(|()| {
                    let manifest = WarmManifest {
                        version: 1,
                        image: vm.image.clone(),
                        cpus: made.cpus,
                        memory_mib: made.memory_mib,
                        disk_size_mib: made.disk_size_mib,
                        network: made.network,
                        engine: made.engine,
                        created_at: banger_sys::clock::unix_now(),
                        fingerprint,
                    };
                    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
                    std::fs::write(staging.join(MANIFEST), json)
                        .and_then(|()| swap_in(&staging, &dir))
                        .map_err(Error::io(format!("cannot keep {}", dir.display())))
                });
            if kept.is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            kept
        })
        .await
    }

    /// The warming VM's snapshot `snap`, made standalone in `to`: the
    /// device state and RAM linked, the disks copied off its layers.
    async fn export_warm(
        &self,
        vm: &VmRecord,
        image: &ImageRecord,
        engine: &dyn Engine,
        snap: &Path,
        to: &Path,
    ) -> Result<(), Error> {
        super::clone::link_or_copy(snap, to).map_err(Error::io(format!(
            "cannot copy {} into {}",
            snap.display(),
            to.display()
        )))?;
        let vdir = self.dir(vm);
        let manifest = layers::read_manifest(snap).map_err(Error::io(format!(
            "cannot read the snapshot in {}",
            snap.display()
        )))?;
        let root = Layer {
            path: to.join(ROOT),
            format: engine.root_drive(&vdir).format,
        };
        let work = Layer {
            path: to.join(WORK),
            format: DriveFormat::Raw,
        };
        let copies = layers::copies(&manifest, &vdir, snap, image, root, work)?;
        let engine = self.engine(vm)?;
        tokio::task::spawn_blocking(move || {
            copies
                .iter()
                .try_for_each(|(top, base, dest)| engine.copy_layer(top, base.as_ref(), dest))
        })
        .await
        .map_err(|source| Error::Task {
            task: "copy disks",
            source,
        })??;
        Ok(())
    }
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Flushes `staging`'s files and makes it `dest`, the old one removed.
fn swap_in(staging: &Path, dest: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(staging)? {
        std::fs::File::open(entry?.path())?.sync_all()?;
    }
    let parent = dest.parent().expect("warm dir has a parent");
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let old = parent.join(format!(".{name}.old-{:08x}", rand::random::<u32>()));
    let had = match std::fs::rename(dest, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    std::fs::rename(staging, dest)?;
    std::fs::File::open(parent)?.sync_all()?;
    if had {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print() -> Fingerprint {
        Fingerprint {
            image: "1700000000 abcdef".into(),
            engine: "qemu-system-x86_64 (QEMU emulator version 7.2.19)".into(),
            accel: "tcg".into(),
            banger: "0.1.0 123 456.7".into(),
            cmdline: "console=ttyS0 norandmaps".into(),
        }
    }

    fn manifest() -> WarmManifest {
        WarmManifest {
            version: 1,
            image: "minimal".into(),
            cpus: 1,
            memory_mib: 256,
            disk_size_mib: 512,
            network: NetworkMode::None,
            engine: EngineKind::Qemu,
            created_at: 0,
            fingerprint: print(),
        }
    }

    fn vm() -> VmRecord {
        VmRecord {
            id: "ab".into(),
            name: "w".into(),
            image: "minimal".into(),
            state: banger_api::VmState::Creating,
            cpus: 1,
            memory_mib: 256,
            disk_size_mib: 512,
            created_at: 0,
            dir: "/x".into(),
            last_error: None,
            network: NetworkMode::None,
            publish: vec![],
            ip: None,
            mac: None,
            engine: EngineKind::Qemu,
            options: Default::default(),
        }
    }

    #[test]
    fn every_fingerprint_that_changed_makes_it_stale_and_says_which() {
        assert_eq!(print().stale(&print()), None);
        let mut now = print();
        now.image = "1700000500 123456".into();
        assert_eq!(
            print().stale(&now).as_deref(),
            Some("the image was rebuilt since")
        );
        let mut now = print();
        now.banger = "0.1.0 124 999.1".into();
        assert!(print().stale(&now).unwrap().starts_with("banger"));
        let mut now = print();
        now.engine = "qemu-system-x86_64 (QEMU emulator version 8.2.0)".into();
        assert!(print().stale(&now).unwrap().contains("8.2.0"));
        let mut now = print();
        now.accel = "kvm".into();
        assert_eq!(
            print().stale(&now).as_deref(),
            Some("it was made under tcg, and VMs now run under kvm")
        );
        let mut now = print();
        now.cmdline = "console=ttyS0".into();
        assert!(print().stale(&now).unwrap().contains("norandmaps"));
    }

    #[test]
    fn a_manifest_from_before_the_command_line_was_recorded_is_stale() {
        let mut old = serde_json::to_value(manifest()).unwrap();
        old["fingerprint"]
            .as_object_mut()
            .unwrap()
            .remove("cmdline");
        let old: WarmManifest = serde_json::from_value(old).unwrap();
        assert!(old.fingerprint.stale(&print()).is_some());
    }

    #[test]
    fn only_the_same_machine_fits_and_the_misfit_names_each_difference() {
        assert_eq!(manifest().misfit(&vm()), None);
        let mut other = vm();
        other.memory_mib = 320;
        other.cpus = 2;
        assert_eq!(
            manifest().misfit(&other).as_deref(),
            Some("this vm asks for 2 cpus (warm: 1), 320 MiB memory (warm: 256)")
        );
        let mut other = vm();
        other.disk_size_mib = 1024;
        other.network = NetworkMode::User;
        assert_eq!(
            manifest().misfit(&other).as_deref(),
            Some("this vm asks for 1024 MiB disk (warm: 512), network user (warm: none)")
        );
    }

    #[test]
    fn the_manifest_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(MANIFEST),
            serde_json::to_vec(&manifest()).unwrap(),
        )
        .unwrap();
        let back = read_manifest(dir.path()).unwrap();
        assert_eq!(back.fingerprint, print());
        assert_eq!(back.misfit(&vm()), None);
    }

    #[test]
    fn an_image_has_sshd_when_its_manifest_lists_openssh_server() {
        let image = |manifest: &str| ImageRecord {
            name: "i".into(),
            source: "debian".into(),
            kernel_version: None,
            dir: "/i".into(),
            created_at: 1,
            manifest: manifest.into(),
        };
        assert!(has_sshd(&image(
            r#"{"installed": {"bash": "5.2", "openssh-server": "1:9.2p1-2"}}"#
        )));
        assert!(!has_sshd(&image(
            r#"{"installed": {"busybox-static": "1:1.35"}}"#
        )));
        assert!(!has_sshd(&image("{}")));
    }

    #[test]
    fn a_swap_replaces_the_old_snapshot_whole() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("minimal");
        let staging = root.path().join(".minimal.new-1");
        for (dir, v) in [(&dest, "old"), (&staging, "new")] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join(MANIFEST), v).unwrap();
        }
        swap_in(&staging, &dest).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join(MANIFEST)).unwrap(), "new");
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["minimal"], "no staging or old copy is left");
    }
}
