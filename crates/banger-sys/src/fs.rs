//! File locks: one daemon per state directory.

use std::fs::File;
use std::path::Path;

/// Takes an exclusive, non-blocking `flock` on `path` (created if needed);
/// held until the returned file is dropped.
pub fn lock_exclusive(path: &Path) -> std::io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    #[test]
    fn second_lock_is_refused_while_the_first_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let first = super::lock_exclusive(&p).unwrap();
        assert!(super::lock_exclusive(&p).is_err());
        drop(first);
        assert!(super::lock_exclusive(&p).is_ok());
    }
}
