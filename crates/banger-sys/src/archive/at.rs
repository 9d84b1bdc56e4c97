//! Directory-fd primitives the archive code is built on: walking to an
//! entry's directory one component at a time without following a symlink,
//! removing a tree relative to a directory fd, swapping a new tree in, and
//! the random part of temporary names. Owns nothing about the archive
//! format.
//!
//! Every component is opened with `O_NOFOLLOW | O_DIRECTORY` relative to the
//! fd of the one before, so neither a symlink in the archive nor one a
//! process plants meanwhile can lead a write outside the tree. That works on
//! every kernel, so `openat2(RESOLVE_BENEATH)` is not needed; the walk is
//! kept cheap by reusing the fds of the previous entry's directories.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

pub(super) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The open directories from a root down to the last entry's directory.
pub(super) struct DirCursor {
    root: OwnedFd,
    /// Each open directory below the root, with its name.
    stack: Vec<(Vec<u8>, OwnedFd)>,
}

impl DirCursor {
    pub fn new(root: OwnedFd) -> Self {
        DirCursor {
            root,
            stack: Vec::new(),
        }
    }

    /// The directory at `path` (relative, already checked; empty is the
    /// root). Fails with `ELOOP` or `ENOTDIR` where a component is a
    /// symlink or not a directory.
    pub fn dir(&mut self, path: &[u8]) -> io::Result<BorrowedFd<'_>> {
        let names: Vec<&[u8]> = if path.is_empty() {
            Vec::new()
        } else {
            path.split(|&b| b == b'/').collect()
        };
        let same = self
            .stack
            .iter()
            .zip(&names)
            .take_while(|((have, _), want)| have.as_slice() == **want)
            .count();
        self.stack.truncate(same);
        for name in &names[same..] {
            let base = self
                .stack
                .last()
                .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
            let fd = rustix::fs::openat(base, OsStr::from_bytes(name), DIR_FLAGS, Mode::empty())?;
            self.stack.push((name.to_vec(), fd));
        }
        Ok(self
            .stack
            .last()
            .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd()))
    }

    /// The directory holding `path` (non-empty), and `path`'s last name.
    pub fn parent<'p>(&mut self, path: &'p [u8]) -> io::Result<(BorrowedFd<'_>, &'p OsStr)> {
        let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(at) => (&path[..at], &path[at + 1..]),
            None => (&path[..0], path),
        };
        Ok((self.dir(dir)?, OsStr::from_bytes(name)))
    }
}

/// Whether an error means "a component is not a directory we may enter".
pub(super) fn is_not_dir(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::LOOP | Errno::NOTDIR)
    )
}

pub(super) fn is_not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Sets both times to `mtime` (whole seconds).
pub(super) fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// `.<name>.banger-<what>-<random>`, with `name` cut short enough for the
/// whole to stay within `NAME_MAX`.
pub(super) fn sibling_name(name: &OsStr, what: &str) -> io::Result<OsString> {
    let mut random = [0u8; 8];
    let mut got = 0;
    while got < random.len() {
        got += rustix::rand::getrandom(&mut random[got..], rustix::rand::GetRandomFlags::empty())?;
    }
    let name = name.as_bytes();
    let mut out = b".".to_vec();
    out.extend_from_slice(&name[..name.len().min(200)]);
    out.extend_from_slice(format!(".banger-{what}-").as_bytes());
    for b in random {
        out.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    Ok(OsString::from_vec(out))
}

/// Removes `name` in `dir` and, if it is a directory, everything beneath
/// it, never following a symlink.
pub(super) fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Directory {
        return Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?);
    }
    let fd = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?;
    // A read-only directory (unpacked with its mode) must be writable to empty it.
    let _ = rustix::fs::fchmod(&fd, Mode::RWXU);
    let mut names = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(&fd)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            names.push(OsString::from_vec(child.to_vec()));
        }
    }
    for child in names {
        remove_tree_at(fd.as_fd(), &child)?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// Puts `new` in `dir` in place of `name`, atomically where the filesystem
/// can exchange names, and removes what was there (best effort).
pub(super) fn swap_in(dir: BorrowedFd<'_>, new: &OsStr, name: &OsStr) -> io::Result<()> {
    match rustix::fs::renameat_with(dir, new, dir, name, RenameFlags::EXCHANGE) {
        Ok(()) => {
            // `new` now names the previous tree.
            let _ = remove_tree_at(dir, new);
            return Ok(());
        }
        // Nothing to exchange with: `name` does not exist yet.
        Err(Errno::NOENT) => {
            match rustix::fs::renameat_with(dir, new, dir, name, RenameFlags::NOREPLACE) {
                Err(Errno::INVAL | Errno::NOSYS) => {}
                other => return Ok(other?),
            }
        }
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {}
        Err(e) => return Err(e.into()),
    }
    // No renameat2 here: move the old one aside, the new one in, the old one out.
    let old = sibling_name(name, "old")?;
    let had_old = match rustix::fs::renameat(dir, name, dir, &old) {
        Ok(()) => true,
        Err(Errno::NOENT) => false,
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = rustix::fs::renameat(dir, new, dir, name) {
        if had_old {
            let _ = rustix::fs::renameat(dir, &old, dir, name);
        }
        return Err(e.into());
    }
    if had_old {
        let _ = remove_tree_at(dir, &old);
    }
    Ok(())
}
