//! A VM's disk layers and snapshot directories, on disk.
//!
//! Each writable drive (root, work) is a chain of copy-on-write layers:
//! the one it was created with (`root.qcow2` over the image, the raw
//! `work.ext4`) and, after snapshots, qcow2 layers in `layers/`. The top of
//! each chain is recorded in `layers.json` (absent: no snapshot was ever
//! taken, the drives are their first layers); a boot or restore attaches
//! the top. A layer a snapshot left is frozen: nothing writes it again,
//! and the snapshot's manifest names it.
//!
//! Crash safety: `layers.json` is replaced by rename, and names a new top
//! before the engine moves onto it. An empty layer over the one the engine
//! still writes shows the same disk, so a daemon killed in between loses
//! nothing. A snapshot is written into `snapshots/.NAME.staging-*` and
//! renamed to `snapshots/NAME` when complete; [`sweep`] clears what an
//! interrupted one left.
//!
//! Which layer each one in `layers/` is over is recorded (`layers/below.json`)
//! when it is made, so [`collect`] can remove the layers nothing needs any
//! more (not a drive's top, not frozen by a snapshot, not under either)
//! after a restore or a snapshot's deletion. A layer with no record is kept.

use crate::engine::{Drive, DriveFormat, Layer};
use crate::layout::VmDir;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const TOPS: &str = "layers.json";
pub const LAYERS_DIR: &str = "layers";
pub const SNAPSHOTS_DIR: &str = "snapshots";
pub const MANIFEST: &str = "manifest.json";
/// What each layer in `layers/` is over.
pub const BELOW: &str = "layers/below.json";

/// One layer, by its path relative to the VM's state dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub file: String,
    pub format: String,
}

impl LayerRef {
    pub fn of(dir: &VmDir, layer: &Layer) -> Option<LayerRef> {
        let rel = layer.path.strip_prefix(&dir.state).ok()?;
        Some(LayerRef {
            file: rel.to_str()?.to_string(),
            format: layer.format.as_str().into(),
        })
    }

    /// The layer in `dir`; `None` for a path that leaves the state dir.
    pub fn resolve(&self, dir: &VmDir) -> Option<Layer> {
        let rel = Path::new(&self.file);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return None;
        }
        Some(Layer {
            path: dir.state.join(rel),
            format: DriveFormat::parse(&self.format)?,
        })
    }
}

/// The top layer of each drive that has moved off its first layer, by the
/// drive's serial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tops(pub BTreeMap<String, LayerRef>);

impl Tops {
    pub fn load(dir: &VmDir) -> std::io::Result<Tops> {
        match std::fs::read(dir.file(TOPS)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tops::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, dir: &VmDir) -> std::io::Result<()> {
        write_atomic(&dir.file(TOPS), &serde_json::to_vec_pretty(self)?)
    }

    /// `drives` with each writable one moved to its recorded top.
    pub fn apply(&self, dir: &VmDir, drives: &mut [Drive]) {
        for d in drives.iter_mut().filter(|d| !d.read_only) {
            if let Some(layer) = self.0.get(d.serial).and_then(|r| r.resolve(dir)) {
                d.path = layer.path;
                d.format = layer.format;
            }
        }
    }
}

/// What each layer in `layers/` is over, by file relative to the state dir.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Below(pub BTreeMap<String, String>);

impl Below {
    pub fn load(dir: &VmDir) -> std::io::Result<Below> {
        match std::fs::read(dir.file(BELOW)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Below::default()),
            Err(e) => Err(e),
        }
    }

    fn save(&self, dir: &VmDir) -> std::io::Result<()> {
        write_atomic(&dir.file(BELOW), &serde_json::to_vec_pretty(self)?)
    }
}

/// Records that `layer` is over `base`, before `layer` is anyone's top.
pub fn record_below(dir: &VmDir, layer: &LayerRef, base: &LayerRef) -> std::io::Result<()> {
    let mut below = Below::load(dir)?;
    below.0.insert(layer.file.clone(), base.file.clone());
    below.save(dir)
}

/// Removes the recorded layers nothing needs: not a drive's top, not a
/// complete snapshot's frozen layer, not under either. Returns what went.
/// Keeps everything when a snapshot's manifest cannot be read.
pub fn collect(dir: &VmDir) -> std::io::Result<Vec<PathBuf>> {
    let mut below = Below::load(dir)?;
    let mut wanted: Vec<String> = Tops::load(dir)?.0.into_values().map(|r| r.file).collect();
    for name in sweep(dir) {
        let m = read_manifest(&snapshot_dir(dir, &name))?;
        wanted.extend(m.layers.into_values().map(|r| r.file));
    }
    let mut needed = std::collections::BTreeSet::new();
    while let Some(file) = wanted.pop() {
        if needed.insert(file.clone())
            && let Some(b) = below.0.get(&file)
        {
            wanted.push(b.clone());
        }
    }
    let unneeded: Vec<String> = below
        .0
        .keys()
        .filter(|f| !needed.contains(*f))
        .cloned()
        .collect();
    let mut removed = Vec::new();
    for file in unneeded {
        let r = LayerRef {
            file: file.clone(),
            format: "qcow2".into(),
        };
        if let Some(layer) = r.resolve(dir)
            && file.starts_with(LAYERS_DIR)
        {
            match std::fs::remove_file(&layer.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => removed.push(layer.path),
            }
        }
        below.0.remove(&file);
    }
    below.save(dir)?;
    Ok(removed)
}

/// What a snapshot directory says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub vm_id: String,
    pub name: String,
    pub created_at: i64,
    pub engine: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// The frozen layer of each writable drive, by serial.
    pub layers: BTreeMap<String, LayerRef>,
    pub paused_ms: u64,
}

/// A snapshot's frozen disks (its `manifest`, in `snap`, of the VM in
/// `dir`) as copies to make: the root flattened onto `image`'s rootfs
/// into `root`, the work disk whole into `work`; `(top, base, dest)`.
pub fn copies(
    manifest: &Manifest,
    dir: &VmDir,
    snap: &Path,
    image: &crate::store::ImageRecord,
    root: Layer,
    work: Layer,
) -> Result<Vec<(Layer, Option<Layer>, Layer)>, crate::error::Error> {
    let mut copies = Vec::new();
    for (serial, frozen) in &manifest.layers {
        let top = frozen
            .resolve(dir)
            .ok_or_else(|| crate::engine::EngineError::BadSnapshot {
                dir: snap.to_owned(),
                problem: format!("layer {:?} is outside its vm's dir", frozen.file),
            })?;
        if serial == banger_proto::ROOT_DRIVE_SERIAL {
            let base = Layer {
                path: Path::new(&image.dir).join(banger_image::layout::ROOTFS),
                format: crate::engine::DriveFormat::Raw,
            };
            copies.push((top, Some(base), root.clone()));
        } else if serial == banger_proto::WORK_DRIVE_SERIAL {
            copies.push((top, None, work.clone()));
        }
    }
    Ok(copies)
}

/// Puts `m`'s frozen layers, and every layer under them, from the VM in
/// `from` into `to` at the same paths, with what each is over: a drive's
/// first layer (the work disk, the root over the image: the bulk of its
/// bytes) hard-linked, since frozen layers are never written again and a
/// link outlives the source; each layer in `layers/` (what the VM wrote
/// between two snapshots) copied, and made to name its base in `to`.
/// Returns `false`, making nothing, when a layer in `layers/` has no
/// record of what it is over: those are copied whole instead.
pub fn link_frozen(
    engine: &dyn crate::engine::Engine,
    from: &VmDir,
    m: &Manifest,
    to: &VmDir,
) -> Result<bool, crate::error::Error> {
    use crate::error::Error;
    let below = Below::load(from).map_err(Error::io(format!(
        "cannot read {}",
        from.file(BELOW).display()
    )))?;
    // Each drive's chain, top down to its first layer, with the first
    // layer's format (the root's is the engine's, the work disk raw).
    let mut chains = Vec::new();
    for (serial, frozen) in &m.layers {
        let first_format = match serial.as_str() {
            banger_proto::ROOT_DRIVE_SERIAL => engine.root_drive(from).format,
            _ => DriveFormat::Raw,
        };
        let chain: Vec<String> =
            std::iter::successors(Some(frozen.file.clone()), |f| below.0.get(f).cloned())
                .take(1024)
                .collect();
        let last = chain.last().expect("one");
        if last.starts_with(LAYERS_DIR) || below.0.contains_key(last) {
            return Ok(false);
        }
        chains.push((chain, first_format));
    }
    let at = |dir: &VmDir, file: &str, format: DriveFormat| {
        LayerRef {
            file: file.to_string(),
            format: format.as_str().into(),
        }
        .resolve(dir)
        .ok_or_else(|| {
            Error::Engine(crate::engine::EngineError::BadSnapshot {
                dir: snapshot_dir(from, &m.name),
                problem: format!("layer {file:?} is outside its vm's dir"),
            })
        })
    };
    for (chain, first_format) in &chains {
        for (i, file) in chain.iter().enumerate() {
            let over = chain.get(i + 1);
            let format = match over {
                Some(_) => DriveFormat::Qcow2,
                None => *first_format,
            };
            let (src, dest) = (at(from, file, format)?, at(to, file, format)?);
            if let Some(parent) = dest.path.parent() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(Error::io(format!("cannot make {}", parent.display())))?;
            }
            let what = format!("{} to {}", src.path.display(), dest.path.display());
            let Some(over) = over else {
                std::fs::hard_link(&src.path, &dest.path)
                    .map_err(Error::io(format!("cannot link {what}")))?;
                continue;
            };
            std::fs::copy(&src.path, &dest.path)
                .map_err(Error::io(format!("cannot copy {what}")))?;
            let base_format = match chain.get(i + 2) {
                Some(_) => DriveFormat::Qcow2,
                None => *first_format,
            };
            engine.rebase_layer(&dest, &at(to, over, base_format)?)?;
            let r = |file: &str| LayerRef {
                file: file.to_string(),
                format: "qcow2".into(),
            };
            record_below(to, &r(file), &r(over)).map_err(Error::io(format!(
                "cannot write {}",
                to.file(BELOW).display()
            )))?;
        }
    }
    Ok(true)
}

pub fn snapshots_dir(dir: &VmDir) -> PathBuf {
    dir.file(SNAPSHOTS_DIR)
}

pub fn snapshot_dir(dir: &VmDir, name: &str) -> PathBuf {
    snapshots_dir(dir).join(name)
}

pub fn read_manifest(snap: &Path) -> std::io::Result<Manifest> {
    serde_json::from_slice(&std::fs::read(snap.join(MANIFEST))?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A new directory for a snapshot being written (owner-only).
pub fn staging_dir(dir: &VmDir, name: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = snapshots_dir(dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)?;
    let staging = parent.join(format!(".{name}.staging-{}", unique()));
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    Ok(staging)
}

/// A new layer's path for the drive `serial`.
pub fn new_layer_path(dir: &VmDir, serial: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let layers = dir.file(LAYERS_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&layers)?;
    Ok(layers.join(format!("{serial}-{}.qcow2", unique())))
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{nanos:x}")
}

/// Flushes `snap`'s files to disk, then makes it `snapshots/NAME`.
pub fn publish(staging: &Path, dir: &VmDir, name: &str) -> std::io::Result<PathBuf> {
    for entry in std::fs::read_dir(staging)? {
        std::fs::File::open(entry?.path())?.sync_all()?;
    }
    let dest = snapshot_dir(dir, name);
    std::fs::rename(staging, &dest)?;
    std::fs::File::open(snapshots_dir(dir))?.sync_all()?;
    Ok(dest)
}

/// Bytes a file or directory tree really holds on disk (holes excluded).
pub fn allocated(path: &Path) -> u64 {
    usage(path).total()
}

/// Bytes on disk (holes excluded), split by whether some other path holds
/// them too: a file with more than one link (a frozen first layer linked
/// into a VM made from a snapshot, a snapshot's RAM linked into a VM
/// restored from it) is shared, and freed only with its last link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub own: u64,
    pub shared: u64,
}

impl Usage {
    pub fn total(self) -> u64 {
        self.own + self.shared
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        Usage {
            own: self.own + other.own,
            shared: self.shared + other.shared,
        }
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), std::ops::Add::add)
    }
}

/// [`Usage`] of a file or directory tree.
pub fn usage(path: &Path) -> Usage {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Usage::default();
    };
    if meta.is_dir() {
        return std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| usage(&e.path()))
            .sum();
    }
    let bytes = meta.blocks() * 512;
    match meta.nlink() {
        0 | 1 => Usage {
            own: bytes,
            shared: 0,
        },
        _ => Usage {
            own: 0,
            shared: bytes,
        },
    }
}

/// What snapshot `snap` (a directory of the VM in `dir`) holds: its own
/// files and the disk layers it froze, as its `manifest` names them.
pub fn snapshot_usage(dir: &VmDir, snap: &Path, manifest: &Manifest) -> Usage {
    let layers: Usage = manifest
        .layers
        .values()
        .filter_map(|l| l.resolve(dir))
        .map(|l| usage(&l.path))
        .sum();
    usage(snap) + layers
}

/// Removes what an interrupted snapshot left: staging directories.
/// Returns the names of the complete snapshot directories.
pub fn sweep(dir: &VmDir) -> Vec<String> {
    let mut complete = Vec::new();
    for entry in std::fs::read_dir(snapshots_dir(dir))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".staging-") {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove a snapshot's staging dir");
            }
        } else if entry.path().join(MANIFEST).is_file() {
            complete.push(name);
        }
    }
    complete
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", unique()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_dir(root: &Path) -> VmDir {
        let d = VmDir::new(&root.join("state"), &root.join("run"), "abc");
        d.create().unwrap();
        d
    }

    #[test]
    fn recorded_tops_replace_writable_drives_only() {
        let t = tempfile::tempdir().unwrap();
        let dir = vm_dir(t.path());
        let mut tops = Tops::default();
        tops.0.insert(
            "banger-work".into(),
            LayerRef {
                file: "layers/banger-work-1.qcow2".into(),
                format: "qcow2".into(),
            },
        );
        tops.save(&dir).unwrap();
        let drive = |serial, read_only| Drive {
            path: dir.file("x"),
            format: DriveFormat::Raw,
            serial,
            read_only,
        };
        let mut drives = vec![drive("banger-root", false), drive("banger-work", false)];
        Tops::load(&dir).unwrap().apply(&dir, &mut drives);
        assert_eq!(drives[0].path, dir.file("x"));
        assert_eq!(drives[1].path, dir.file("layers/banger-work-1.qcow2"));
        assert_eq!(drives[1].format, DriveFormat::Qcow2);
    }

    #[test]
    fn a_layer_outside_the_state_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = vm_dir(t.path());
        for file in ["../other/root.qcow2", "/etc/passwd"] {
            let r = LayerRef {
                file: file.into(),
                format: "raw".into(),
            };
            assert_eq!(r.resolve(&dir), None, "{file}");
        }
    }

    #[test]
    fn sweep_removes_staging_and_keeps_complete_snapshots() {
        let t = tempfile::tempdir().unwrap();
        let dir = vm_dir(t.path());
        let staging = staging_dir(&dir, "one").unwrap();
        std::fs::write(staging.join(MANIFEST), "{}").unwrap();
        let done = staging_dir(&dir, "two").unwrap();
        std::fs::write(done.join(MANIFEST), "{}").unwrap();
        publish(&done, &dir, "two").unwrap();
        assert_eq!(sweep(&dir), ["two"]);
        assert!(!staging.exists());
    }
}
