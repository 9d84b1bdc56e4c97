//! File locks (one daemon per state directory), memory files, sparse copies.

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

/// Copies `from` to `to` (created, or truncated), its data extents only:
/// a hole stays a hole, found with `SEEK_DATA`/`SEEK_HOLE`, and the data
/// moves inside the kernel (`copy_file_range`). A 4 GiB work disk seed
/// holding 660 KB is a few system calls, where `cp --sparse` was a process
/// (~4 ms of every create).
pub fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::SeekFrom;
    let src = File::open(from)?;
    let dst = File::create(to)?;
    let len = src.metadata()?.len();
    let mut pos = 0;
    while pos < len {
        let start = match rustix::fs::seek(&src, SeekFrom::Data(pos as i64)) {
            Ok(start) => start,
            // No data past `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(&src, SeekFrom::Hole(start as i64))?;
        let (mut off_in, mut off_out) = (start, start);
        while off_in < end {
            let want = (end - off_in) as usize;
            let n = rustix::fs::copy_file_range(
                &src,
                Some(&mut off_in),
                &dst,
                Some(&mut off_out),
                want,
            )?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} ended while being copied", from.display()),
                ));
            }
        }
        pos = end;
    }
    dst.set_len(len)?;
    Ok(())
}

#[cfg(test)]
mod copy_sparse_tests {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn data_is_copied_and_holes_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        let mut f = std::fs::File::create(&from).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(&[7u8; 10_000]).unwrap();
        // A hole at the end too.
        f.set_len(64 << 20).unwrap();
        drop(f);
        std::fs::write(&to, b"old content, longer than nothing").unwrap();
        super::copy_sparse(&from, &to).unwrap();
        assert_eq!(std::fs::read(&from).unwrap(), std::fs::read(&to).unwrap());
        let blocks = std::fs::metadata(&to).unwrap().blocks() * 512;
        assert!(
            blocks < 1 << 20,
            "{blocks} bytes allocated for ~14 KB of data"
        );
    }

    #[test]
    fn an_empty_or_all_hole_file_copies_to_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        std::fs::File::create(&from)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        super::copy_sparse(&from, &to).unwrap();
        let meta = std::fs::metadata(&to).unwrap();
        assert_eq!((meta.len(), meta.blocks()), (1 << 30, 0));
        std::fs::write(&from, b"").unwrap();
        super::copy_sparse(&from, &to).unwrap();
        assert_eq!(std::fs::metadata(&to).unwrap().len(), 0);
    }
}
