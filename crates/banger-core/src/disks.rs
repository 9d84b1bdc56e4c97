//! Per-VM disks besides the root disk (which is the engine's), made without
//! mounting anything:
//!
//! - the work disk at `/root`: a copy of the image's work seed grown to the
//!   requested size. Growing (resize2fs) costs a few hundred ms, so the grown
//!   seed is cached once per size in the image directory and each VM gets a
//!   sparse copy of it (no mkfs and no resize per VM). Concurrent creates
//!   make it once: the first takes `.work-seed-<size>M.lock` and grows a
//!   temporary copy that it renames into place; the others wait on the
//!   lock and find it made. It is never replaced once there, because
//!   `cp` refuses a source renamed over while it copies;
//! - the config drive: the per-VM [`GuestConfig`], NUL-padded.

use banger_proto::GuestConfig;
use banger_sys::command::{Cmd, CommandError, Runner};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot grow the work seed to {size_mib} MiB")]
    Grow {
        size_mib: u64,
        #[source]
        source: CommandError,
    },
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot copy the work disk to {path}")]
    Copy {
        path: PathBuf,
        #[source]
        source: CommandError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The cached copy of `seed` grown to `size_mib`, made on first use.
pub fn grown_seed(runner: &dyn Runner, seed: &Path, size_mib: u64) -> Result<PathBuf, DiskError> {
    let dir = seed.parent().unwrap_or(Path::new("."));
    let grown = dir.join(format!("work-seed-{size_mib}M.ext4"));
    if grown.exists() {
        return Ok(grown);
    }
    let lock_path = dir.join(format!(".work-seed-{size_mib}M.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    // Another create may have made it while this one waited.
    if grown.exists() {
        return Ok(grown);
    }
    remove_leftovers(dir, size_mib);
    let tmp = dir.join(format!(
        ".work-seed-{size_mib}M.{:08x}.tmp",
        rand::random::<u32>()
    ));
    let result = (|| {
        sparse_copy(runner, seed, &tmp).map_err(|source| DiskError::Copy {
            path: tmp.clone(),
            source,
        })?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let current = f.metadata().map_err(io_err(&tmp))?.len();
        let want = size_mib * 1024 * 1024;
        if want > current {
            f.set_len(want).map_err(io_err(&tmp))?;
            drop(f);
            runner
                .run(&Cmd::new("resize2fs").args(["-f"]).arg(&tmp))
                .map_err(|source| DiskError::Grow { size_mib, source })?;
            // resize2fs leaves no overhead figure: record the kernel's, or
            // each VM's first mount writes it into every superblock copy.
            if let Err(e) = banger_image::overhead::record(runner, &tmp) {
                tracing::warn!(error = %crate::error::chain(&e), "the grown work seed's first mount will count its overhead");
            }
        }
        std::fs::rename(&tmp, &grown).map_err(io_err(&grown))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| grown)
}

/// Temporary seeds of runs that died before their rename (we hold the lock).
fn remove_leftovers(dir: &Path, size_mib: u64) {
    let prefix = format!(".work-seed-{size_mib}M.");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A copy that keeps holes (and shares extents where the filesystem can).
pub fn sparse_copy(runner: &dyn Runner, from: &Path, to: &Path) -> Result<(), CommandError> {
    runner
        .run(
            &Cmd::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(from)
                .arg(to),
        )
        .map(drop)
}

/// Gives a VM its own work disk of `size_mib` from the image's seed.
pub fn create_work_disk(
    runner: &dyn Runner,
    seed: &Path,
    size_mib: u64,
    dest: &Path,
) -> Result<(), DiskError> {
    let grown = grown_seed(runner, seed, size_mib)?;
    sparse_copy(runner, &grown, dest).map_err(|source| DiskError::Copy {
        path: dest.to_owned(),
        source,
    })
}

pub fn write_config_drive(cfg: &GuestConfig, path: &Path) -> Result<(), DiskError> {
    let bytes = cfg.to_drive().map_err(io_err(path))?;
    std::fs::write(path, bytes).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_sys::command::SystemRunner;

    fn have(program: &str) -> bool {
        banger_sys::command::which(program).is_some()
    }

    /// A fresh dir holding a 16 MiB ext4 seed, or `None` (the test skips,
    /// or fails under `BANGER_E2E_REQUIRED=1`) without e2fsprogs.
    fn small_seed() -> Option<(tempfile::TempDir, PathBuf)> {
        if !have("mkfs.ext4") || !have("resize2fs") {
            banger_sys::skip_test("needs e2fsprogs (mkfs.ext4, resize2fs)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("work-seed.ext4");
        SystemRunner
            .run(
                &Cmd::new("mkfs.ext4")
                    .args(["-q", "-F"])
                    .arg(&seed)
                    .arg("16M"),
            )
            .unwrap();
        Some((dir, seed))
    }

    #[test]
    fn work_disk_is_grown_once_and_copied_sparsely() {
        let Some((dir, seed)) = small_seed() else {
            return;
        };
        let r = SystemRunner;
        let disk = dir.path().join("work.ext4");
        create_work_disk(&r, &seed, 256, &disk).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 256 * 1024 * 1024);
        assert!(
            dir.path().join("work-seed-256M.ext4").exists(),
            "grown seed is cached"
        );
        let out = r
            .run(&Cmd::new("dumpe2fs").args(["-h"]).arg(&disk))
            .unwrap()
            .stdout_lossy();
        let field = |name: &str| -> u64 {
            let line = out.lines().find(|l| l.starts_with(name)).unwrap();
            line.split(':').nth(1).unwrap().trim().parse().unwrap()
        };
        let (blocks, bsize) = (field("Block count:"), field("Block size:"));
        assert_eq!(
            blocks * bsize,
            256 * 1024 * 1024,
            "the filesystem itself was grown"
        );
        let sb = banger_image::overhead::read_superblock(&disk).unwrap();
        assert_eq!(
            Some(banger_image::overhead::recorded(&sb)),
            banger_image::overhead::overhead_clusters(&sb),
            "the grown disk records its metadata overhead for the guest's first mount"
        );
    }

    #[test]
    fn concurrent_creates_of_one_size_all_get_a_work_disk() {
        let Some((dir, seed)) = small_seed() else {
            return;
        };
        // Counts the grows: the race shows as more than one even when no
        // copy happened to be caught by a rename.
        struct Counting(std::sync::atomic::AtomicUsize);
        impl Runner for Counting {
            fn run(&self, cmd: &Cmd) -> Result<banger_sys::command::Output, CommandError> {
                if cmd.program == "resize2fs" {
                    self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                SystemRunner.run(cmd)
            }
        }
        let runner = Counting(Default::default());
        let start = std::sync::Barrier::new(16);
        let results: Vec<Result<(), DiskError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let (seed, start, runner) = (&seed, &start, &runner);
                    let disk = dir.path().join(format!("work-{i}.ext4"));
                    s.spawn(move || {
                        start.wait();
                        create_work_disk(runner, seed, 128, &disk)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, res) in results.iter().enumerate() {
            if let Err(e) = res {
                panic!("create {i}: {}", crate::error::chain(e));
            }
            let disk = dir.path().join(format!("work-{i}.ext4"));
            assert_eq!(std::fs::metadata(&disk).unwrap().len(), 128 * 1024 * 1024);
        }
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("work-") || n.starts_with("work-seed"))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".work-seed-128M.lock",
                "work-seed-128M.ext4",
                "work-seed.ext4"
            ],
            "one grown seed, no temporary copies"
        );
        assert_eq!(runner.0.into_inner(), 1, "the seed is grown once");
    }

    #[test]
    fn config_drive_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.img");
        let cfg = GuestConfig {
            version: 1,
            vm_name: "web".into(),
            hostname: "web".into(),
            authorized_keys: vec![],
            network: None,
            git_identity: vec![],
            ssh_host_key: None,
        };
        write_config_drive(&cfg, &p).unwrap();
        assert_eq!(
            GuestConfig::from_drive(&std::fs::read(&p).unwrap()).unwrap(),
            cfg
        );
    }
}
