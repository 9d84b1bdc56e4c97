//! Archiving what is on disk: a whole file, symlink or tree ([`pack`]), or
//! a listed subset of a tree ([`pack_list`], for git's "tracked and
//! untracked-not-ignored" lists). Owns walking the disk; never follows a
//! symlink below the root it was given.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use banger_proto::archive::{Encoder, MODE_MASK, check_path};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use super::at::{DIR_FLAGS, DirCursor, is_not_dir, is_not_found};
use super::{ArchiveError, SkipReason, Skipped, Stats, rel_path};

/// Content is copied in pieces of this size.
const CHUNK: usize = 64 * 1024;

/// Archives `root`: a file or a symlink (itself, not what it points to) as
/// a lone root entry, or a directory with everything beneath it, sorted by
/// name, symlinks stored as symlinks.
pub fn pack(root: &Path, out: &mut impl Write) -> Result<Stats, ArchiveError> {
    let cwd = rustix::fs::CWD;
    let stat = rustix::fs::statat(cwd, root, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
        let source = io::Error::from(e);
        if is_not_found(&source) {
            ArchiveError::NotFound { path: root.into() }
        } else {
            ArchiveError::Read {
                path: root.into(),
                source,
            }
        }
    })?;
    let mut packer = Packer {
        enc: Encoder::new(out),
        stats: Stats::default(),
    };
    let read_err = |source: io::Error| ArchiveError::Read {
        path: root.into(),
        source,
    };
    if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
        let fd = rustix::fs::openat(cwd, root, DIR_FLAGS, Mode::empty())
            .map_err(|e| read_err(e.into()))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| read_err(e.into()))?;
        packer.enc.dir(b"", mode(&stat), mtime(&stat))?;
        packer.stats.dirs += 1;
        packer.walk(fd.as_fd(), &mut Vec::new())?;
    } else {
        let (dir, name) = match (root.parent(), root.file_name()) {
            (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => (parent, name),
            (_, Some(name)) => (Path::new("."), name),
            _ => (root, OsStr::new(".")),
        };
        let dir = rustix::fs::openat(cwd, dir, DIR_FLAGS, Mode::empty())
            .map_err(|e| read_err(e.into()))?;
        packer.entry(dir.as_fd(), name, b"", &stat)?;
    }
    let stats = packer.stats;
    packer.enc.end()?;
    Ok(stats)
}

/// Archives the directory `top` with only the listed entries beneath it
/// (relative paths as bytes), plus the directories that lead to them,
/// parents first. A listed directory is archived without its contents; a
/// listed path that is gone, or lies beneath something that is not a
/// directory, is skipped and reported; a path that breaks the archive's
/// rules fails the pack.
pub fn pack_list(
    top: &Path,
    paths: &[Vec<u8>],
    out: &mut impl Write,
) -> Result<Stats, ArchiveError> {
    let fd = rustix::fs::openat(rustix::fs::CWD, top, DIR_FLAGS, Mode::empty()).map_err(|e| {
        let source = io::Error::from(e);
        if is_not_found(&source) {
            ArchiveError::NotFound { path: top.into() }
        } else if is_not_dir(&source) {
            ArchiveError::NotADirectory { path: top.into() }
        } else {
            ArchiveError::Read {
                path: top.into(),
                source,
            }
        }
    })?;
    // Every path and every directory leading to it; `true` when listed.
    // In byte order a path sorts after each of its prefixes, so parents
    // come first.
    let mut wanted: BTreeMap<&[u8], bool> = BTreeMap::new();
    for path in paths {
        check_path(path).map_err(|e| ArchiveError::Format { source: e.into() })?;
        for (at, _) in path.iter().enumerate().filter(|(_, b)| **b == b'/') {
            wanted.entry(&path[..at]).or_insert(false);
        }
        wanted.insert(path, true);
    }
    let stat = rustix::fs::fstat(&fd).map_err(|e| ArchiveError::Read {
        path: top.into(),
        source: e.into(),
    })?;
    let mut packer = Packer {
        enc: Encoder::new(out),
        stats: Stats::default(),
    };
    packer.enc.dir(b"", mode(&stat), mtime(&stat))?;
    packer.stats.dirs += 1;
    let mut cursor = DirCursor::new(fd);
    for (path, listed) in wanted {
        // Only listed paths are reported; a directory leading to them is
        // skipped along with them.
        let mut skip = |reason| {
            if listed {
                packer.stats.skipped.push(Skipped {
                    path: rel_path(path),
                    reason,
                });
            }
        };
        let read_err = |source: io::Error| ArchiveError::Read {
            path: top.join(rel_path(path)),
            source,
        };
        let (dir, name) = match cursor.parent(path) {
            Ok(found) => found,
            Err(e) if is_not_found(&e) => {
                skip(SkipReason::Missing);
                continue;
            }
            Err(e) if is_not_dir(&e) => {
                skip(SkipReason::BeneathNonDirectory);
                continue;
            }
            Err(e) => return Err(read_err(e)),
        };
        let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(e) if is_not_found(&e.into()) => {
                skip(SkipReason::Missing);
                continue;
            }
            Err(e) => return Err(read_err(e.into())),
        };
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        if !listed && !is_dir {
            // Its listed children will be skipped as beneath a non-directory.
            continue;
        }
        packer.entry(dir, name, path, &stat)?;
    }
    let stats = packer.stats;
    packer.enc.end()?;
    Ok(stats)
}

struct Packer<W: Write> {
    enc: Encoder<W>,
    stats: Stats,
}

impl<W: Write> Packer<W> {
    /// Archives everything in `dir`, whose archive path is `path`.
    fn walk(&mut self, dir: BorrowedFd<'_>, path: &mut Vec<u8>) -> Result<(), ArchiveError> {
        let read_err = |path: &[u8], source: io::Error| ArchiveError::Read {
            path: rel_path(path),
            source,
        };
        let mut names = Vec::new();
        let mut entries = rustix::fs::Dir::read_from(dir).map_err(|e| read_err(path, e.into()))?;
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(|e| read_err(path, e.into()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        drop(entries);
        names.sort();
        for name in names {
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            let name = OsStr::from_bytes(&name);
            match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => {
                    if let Some(child) = self.entry(dir, name, path, &stat)? {
                        self.walk(child.as_fd(), path)?;
                    }
                }
                // Removed since the directory was read.
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(read_err(path, e.into())),
            }
            path.truncate(len);
        }
        Ok(())
    }

    /// Archives one entry; returns the directory's fd when it is one.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &[u8],
        stat: &Stat,
    ) -> Result<Option<OwnedFd>, ArchiveError> {
        let read_err = |source: io::Error| ArchiveError::Read {
            path: rel_path(path),
            source,
        };
        let skip = |stats: &mut Stats, reason| {
            stats.skipped.push(Skipped {
                path: rel_path(path),
                reason,
            })
        };
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => {
                let fd = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| read_err(e.into()))?;
                self.enc.dir(path, mode(stat), mtime(stat))?;
                self.stats.dirs += 1;
                Ok(Some(fd))
            }
            FileType::RegularFile => {
                self.file(dir, name, path)?;
                Ok(None)
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new())
                    .map_err(|e| read_err(e.into()))?;
                self.enc.symlink(path, mtime(stat), target.as_bytes())?;
                self.stats.symlinks += 1;
                Ok(None)
            }
            FileType::Socket => {
                skip(&mut self.stats, SkipReason::Socket);
                Ok(None)
            }
            FileType::Fifo => {
                skip(&mut self.stats, SkipReason::Fifo);
                Ok(None)
            }
            _ => {
                skip(&mut self.stats, SkipReason::Device);
                Ok(None)
            }
        }
    }

    /// Archives a regular file with exactly the size it had when opened.
    fn file(&mut self, dir: BorrowedFd<'_>, name: &OsStr, path: &[u8]) -> Result<(), ArchiveError> {
        let read_err = |source: io::Error| ArchiveError::Read {
            path: rel_path(path),
            source,
        };
        // O_NONBLOCK: should it have become a FIFO since the stat, opening
        // must not wait for a writer; the fstat below then rejects it.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd =
            rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(|e| read_err(e.into()))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| read_err(e.into()))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(ArchiveError::Changed {
                path: rel_path(path),
            });
        }
        let size = stat.st_size as u64;
        self.enc.file(path, mode(&stat), mtime(&stat), size)?;
        let mut file = std::fs::File::from(fd).take(size);
        let mut buf = vec![0u8; CHUNK.min(size as usize)];
        let mut sent = 0u64;
        while sent < size {
            let n = match file.read(&mut buf) {
                Ok(0) => {
                    return Err(ArchiveError::Changed {
                        path: rel_path(path),
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            };
            self.enc.data(&buf[..n])?;
            sent += n as u64;
        }
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }
}

fn mode(stat: &Stat) -> u32 {
    stat.st_mode & MODE_MASK
}

/// `st_mtime` is unsigned on some targets; times before 1970 stay negative.
#[allow(clippy::unnecessary_cast)]
fn mtime(stat: &Stat) -> i64 {
    stat.st_mtime as i64
}
