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

/// Whether some process holds an `flock` on `path`, as `/proc/locks`
/// says; asks without taking it.
pub fn flock_held(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let id = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(meta.dev()),
        rustix::fs::minor(meta.dev()),
        meta.ino()
    );
    Ok(std::fs::read_to_string("/proc/locks")?.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"FLOCK") && f.contains(&id.as_str())
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_held_lock_is_seen_without_taking_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        std::fs::write(&p, "").unwrap();
        assert!(!super::flock_held(&p).unwrap());
        let held = super::lock_exclusive(&p).unwrap();
        assert!(super::flock_held(&p).unwrap());
        drop(held);
        // A process another test forks at this moment holds a copy of the
        // descriptor (and so the lock) until its exec closes it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while super::flock_held(&p).unwrap() {
            assert!(std::time::Instant::now() < deadline, "still held");
            std::thread::yield_now();
        }
    }

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

/// An anonymous memory file named `name` (as `/memfd:NAME` in
/// `/proc/<pid>/fd`), close-on-exec: memory like any other, gone when the
/// last holder closes it or its mapping goes.
pub fn memfd(name: &str) -> std::io::Result<File> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod memfd_tests {
    use std::io::{Read, Seek, Write};

    #[test]
    fn a_memfd_holds_what_is_written_and_shows_its_name() {
        let mut f = super::memfd("banger-test").unwrap();
        f.write_all(b"guest ram").unwrap();
        f.rewind().unwrap();
        let mut back = String::new();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "guest ram");
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        assert!(
            link.to_string_lossy().starts_with("/memfd:banger-test"),
            "{link:?}"
        );
    }
}
