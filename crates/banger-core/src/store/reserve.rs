//! Room kept on the store's disk for the store itself. When the host disk
//! fills up, the writes that free space (`vm delete`, `vm stop`) still need
//! to record what they did; SQLite answers "database or disk is full"
//! instead. So the store keeps a reserve file of [`SIZE`] bytes, really
//! allocated, beside the database: a write that fails for lack of space
//! halves it (the last piece is removed) and runs again, so several writes
//! in a row get room even while other writers take some of it. Once the
//! disk has room again the reserve is made whole.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub const SIZE: u64 = 8 << 20;
/// Free space needed beside the reserve before it is made whole again.
const ROOM: u64 = 64 << 20;
/// The least piece released alone: below it, the rest goes.
const LEAST: u64 = 256 << 10;

pub struct Reserve {
    path: PathBuf,
    /// Whether the reserve is not whole.
    short: AtomicBool,
}

impl Reserve {
    /// The reserve beside `db`, made now when the disk has room for it.
    pub fn beside(db: &Path) -> Reserve {
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push(".reserve");
        let r = Reserve {
            path: db.with_file_name(name),
            short: AtomicBool::new(true),
        };
        r.replenish();
        r
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frees half the reserve (all of a small rest); false when there was
    /// none to free.
    pub fn release(&self) -> bool {
        let Ok(len) = std::fs::metadata(&self.path).map(|m| m.len()) else {
            return false;
        };
        let freed = if len <= LEAST {
            std::fs::remove_file(&self.path).is_ok()
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .and_then(|f| f.set_len(len / 2))
                .is_ok()
        };
        if freed {
            self.short.store(true, Ordering::Relaxed);
            tracing::warn!(file = %self.path.display(), freed = len - len / 2, "the disk is full: released part of the store's reserve");
        }
        freed
    }

    /// Makes the reserve whole again if it is not and the disk has room
    /// (one flag read when nothing is missing).
    pub fn replenish(&self) {
        if !self.short.load(Ordering::Relaxed) {
            return;
        }
        let whole = std::fs::metadata(&self.path).is_ok_and(|m| m.len() == SIZE);
        let room = self
            .path
            .parent()
            .and_then(|d| banger_sys::process::free_bytes(d).ok())
            .is_some_and(|free| free >= ROOM + SIZE);
        let made = whole || (room && self.make().is_ok());
        self.short.store(!made, Ordering::Relaxed);
    }

    /// Writes the reserve's bytes (a sparse file would reserve nothing).
    fn make(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("reserve.tmp");
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..SIZE / chunk.len() as u64 {
                f.write_all(&chunk)?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_reserve_is_allocated_released_in_halves_and_made_whole_again() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::beside(&dir.path().join("banger.db"));
        let meta = std::fs::metadata(r.path()).unwrap();
        assert_eq!(meta.len(), SIZE);
        assert!(meta.blocks() * 512 >= SIZE, "really allocated, not sparse");
        assert_eq!(meta.mode() & 0o777, 0o600);
        let len = || std::fs::metadata(r.path()).map(|m| m.len()).unwrap_or(0);
        assert!(r.release());
        assert_eq!(len(), SIZE / 2, "half goes first");
        let mut releases = 1;
        while r.release() {
            releases += 1;
        }
        assert_eq!(len(), 0);
        assert!(releases >= 5, "several writes get room: {releases}");
        r.replenish();
        assert_eq!(len(), SIZE, "made whole again once there is room");
    }
}
