//! Room on the disk holding the state dir. Work that writes there (a
//! create, a start, an image build) is refused up front when the disk has
//! less than [`ROOM`] free, and a failure for lack of space on the way is
//! told as such, whichever tool hit it ([`explain`]).

use crate::error::Error;
use std::path::Path;

/// The least free space a create, start or image build begins with: less,
/// and the guest would be paused on its first writes.
pub const ROOM: u64 = 64 << 20;

/// Free space on the disk holding `dir`, in MiB (0 when unknown).
pub fn free_mib(dir: &Path) -> u64 {
    banger_sys::process::free_bytes(dir).unwrap_or(0) >> 20
}

/// Refuses `action` when the disk holding `dir` has less than [`ROOM`] free.
pub fn ensure_room(dir: &Path, action: &'static str) -> Result<(), Error> {
    ensure(dir, ROOM, action)
}

/// Refuses `action` when the disk holding `dir` has less than `need` bytes free.
pub fn ensure(dir: &Path, need: u64, action: &'static str) -> Result<(), Error> {
    match banger_sys::process::free_bytes(dir) {
        Ok(free) if free < need => Err(disk_full(dir, need, action, None)),
        _ => Ok(()),
    }
}

/// `err`, told as a full disk when that is what it comes down to.
pub fn explain(err: Error, dir: &Path, action: &'static str) -> Error {
    if matches!(err, Error::DiskFull { .. }) || !says_disk_full(&err) {
        return err;
    }
    disk_full(dir, ROOM, action, Some(err))
}

fn disk_full(dir: &Path, need: u64, action: &'static str, source: Option<Error>) -> Error {
    Error::DiskFull {
        dir: dir.to_owned(),
        free_mib: free_mib(dir),
        need_mib: need >> 20,
        action,
        source: source.map(Box::new),
    }
}

/// Whether a cause in `err`'s chain is the lack of space: an ENOSPC, a
/// tool saying so, or SQLite's "database or disk is full".
fn says_disk_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            return true;
        }
        let text = e.to_string();
        if text.contains("No space left on device") || text.contains("disk is full") {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_for_lack_of_space_are_told_as_a_full_disk_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let enospc = Error::Io {
            context: "cannot write the config drive".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let told = crate::error::chain(&explain(enospc, dir.path(), "creating a vm"));
        assert!(
            told.starts_with(&format!(
                "the disk holding {} is full",
                dir.path().display()
            )) && told.ends_with("No space left on device (os error 28)"),
            "{told}"
        );
        let tool = Error::Guest("cp: error writing 'work.ext4': No space left on device".into());
        assert!(matches!(
            explain(tool, dir.path(), "x"),
            Error::DiskFull { .. }
        ));
        let other = Error::Guest("permission denied".into());
        assert!(matches!(explain(other, dir.path(), "x"), Error::Guest(_)));
    }
}
