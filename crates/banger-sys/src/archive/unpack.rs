//! Unpacking an archive stream into a fresh tree beside its destination and
//! swapping it in once complete. Owns the temporary's life: created at the
//! archive's root entry, removed on any failure or drop, renamed over the
//! destination only by [`Unpacker::finish`].
//!
//! 1. [`Unpacker::begin`] opens the destination's parent directory. It must
//!    exist (no `mkdir -p`: a typo in a destination should fail, not grow a
//!    new tree somewhere).
//! 2. The root entry creates `<parent>/.<name>.banger-new-<random>`: a
//!    directory (mode 0700 until the end), a file or a symlink.
//! 3. Every other entry is created beneath it (see the rules in `mod.rs`);
//!    files start as 0600 and get their mode and mtime once written;
//!    directories get theirs at the end, deepest first, so a read-only
//!    directory can still be filled and its mtime is not disturbed.
//! 4. [`Unpacker::finish`] requires the end marker, flushes the filesystem
//!    (`syncfs`), then swaps the new tree in for whatever `dest` is (file,
//!    directory or symlink, which is replaced, not followed): atomically
//!    with `renameat2(RENAME_EXCHANGE)` where the filesystem can, else by
//!    moving the old one aside to `.<name>.banger-old-<random>` first. The
//!    old one is then removed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use banger_proto::archive::{Decoder, EntryHeader, EntryKind, Event};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::at::{
    DIR_FLAGS, DirCursor, is_not_dir, is_not_found, remove_tree_at, sibling_name, swap_in,
    timestamps,
};
use super::{ArchiveError, Stats, rel_path};

/// Writes one archive stream to a new tree and swaps it in for `dest`.
pub struct Unpacker {
    dest: PathBuf,
    parent: OwnedFd,
    name: OsString,
    temp: OsString,
    decoder: Decoder,
    state: State,
    /// The file being written: its archive path, mode and mtime.
    file: Option<(File, Vec<u8>, u32, i64)>,
    /// Every directory's archive path, mode and mtime, in archive order.
    dirs: Vec<(Vec<u8>, u32, i64)>,
    stats: Stats,
    poisoned: bool,
}

enum State {
    /// No root entry yet; nothing exists on disk.
    Empty,
    /// The temporary is a directory.
    Tree(DirCursor),
    /// The temporary is a file or a symlink.
    Leaf,
    /// The temporary has been swapped in; nothing to clean up.
    Done,
}

impl Unpacker {
    /// Prepares to replace `dest` (see step 1 of the module doc).
    pub fn begin(dest: &Path) -> Result<Unpacker, ArchiveError> {
        let name = match dest.file_name() {
            Some(name) => name.to_os_string(),
            None => return Err(ArchiveError::NoName { dest: dest.into() }),
        };
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let parent = rustix::fs::openat(
            rustix::fs::CWD,
            parent,
            DIR_FLAGS.difference(OFlags::NOFOLLOW),
            Mode::empty(),
        )
        .map_err(|e| match io::Error::from(e) {
            e if is_not_found(&e) || is_not_dir(&e) => {
                ArchiveError::ParentMissing { dest: dest.into() }
            }
            source => ArchiveError::Write {
                path: parent.into(),
                source,
            },
        })?;
        Ok(Unpacker {
            dest: dest.into(),
            temp: sibling_name(&name, "new").map_err(|source| ArchiveError::Write {
                path: dest.into(),
                source,
            })?,
            parent,
            name,
            decoder: Decoder::new(),
            state: State::Empty,
            file: None,
            dirs: Vec::new(),
            stats: Stats::default(),
            poisoned: false,
        })
    }

    /// Takes the next bytes of the stream. After an error the unpack is
    /// over: drop the unpacker (which removes the temporary).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        if self.poisoned {
            return Err(ArchiveError::Poisoned);
        }
        let result = self.feed_inner(bytes);
        self.poisoned = result.is_err();
        result
    }

    fn feed_inner(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.decoder.feed(bytes)?;
        while let Some(event) = self.decoder.next_event() {
            match event {
                Event::Entry(header) => {
                    self.close_file()?;
                    self.create(header)?;
                }
                Event::Data(data) => {
                    let (file, path, ..) = self.file.as_mut().expect("data follows a file entry");
                    file.write_all(&data)
                        .map_err(|source| ArchiveError::Write {
                            path: rel_path(path),
                            source,
                        })?;
                }
                Event::End => self.close_file()?,
            }
        }
        Ok(())
    }

    /// Swaps the complete tree in (step 4 of the module doc).
    pub fn finish(mut self) -> Result<Stats, ArchiveError> {
        if self.poisoned {
            return Err(ArchiveError::Poisoned);
        }
        self.decoder.check_complete()?;
        if let State::Tree(cursor) = &mut self.state {
            for (path, mode, mtime) in self.dirs.iter().rev() {
                let fd = cursor.dir(path).map_err(|source| ArchiveError::Write {
                    path: rel_path(path),
                    source,
                })?;
                let set = rustix::fs::fchmod(fd, Mode::from_raw_mode(*mode))
                    .and_then(|()| rustix::fs::futimens(fd, &timestamps(*mtime)));
                set.map_err(|e| ArchiveError::Write {
                    path: rel_path(path),
                    source: e.into(),
                })?;
            }
        }
        // Close the tree's fds before it moves.
        self.state = State::Leaf;
        let swap_err = |source: io::Error| ArchiveError::Swap {
            dest: self.dest.clone(),
            source,
        };
        rustix::fs::syncfs(&self.parent).map_err(|e| swap_err(e.into()))?;
        swap_in(self.parent.as_fd(), &self.temp, &self.name).map_err(swap_err)?;
        self.state = State::Done;
        let _ = rustix::fs::fsync(&self.parent);
        Ok(std::mem::take(&mut self.stats))
    }

    /// Gives up, removing the temporary (as dropping does).
    pub fn abort(self) {}

    fn create(&mut self, h: EntryHeader) -> Result<(), ArchiveError> {
        let write_err = |source: io::Error| ArchiveError::Write {
            path: rel_path(&h.path),
            source,
        };
        let (dir, name) = match &mut self.state {
            State::Empty => {
                // The root: a directory becomes the tree, anything else the leaf.
                if h.kind == EntryKind::Dir {
                    rustix::fs::mkdirat(&self.parent, &self.temp, Mode::RWXU)
                        .map_err(|e| write_err(e.into()))?;
                    // Leaf until it is open, so that dropping still removes it.
                    self.state = State::Leaf;
                    let fd = rustix::fs::openat(&self.parent, &self.temp, DIR_FLAGS, Mode::empty())
                        .map_err(|e| write_err(e.into()))?;
                    self.state = State::Tree(DirCursor::new(fd));
                    self.dirs.push((h.path, h.mode, h.mtime));
                    self.stats.dirs += 1;
                    return Ok(());
                }
                self.state = State::Leaf;
                (self.parent.as_fd(), self.temp.as_os_str())
            }
            State::Tree(cursor) => cursor.parent(&h.path).map_err(|e| {
                if is_not_dir(&e) {
                    ArchiveError::BeneathNonDirectory {
                        path: rel_path(&h.path),
                    }
                } else if is_not_found(&e) {
                    ArchiveError::ParentNotCreated {
                        path: rel_path(&h.path),
                    }
                } else {
                    write_err(e)
                }
            })?,
            // The decoder allows nothing after a leaf root.
            State::Leaf | State::Done => unreachable!("entry after a leaf root"),
        };
        let exists = |e: Errno| match e {
            Errno::EXIST => ArchiveError::Duplicate {
                path: rel_path(&h.path),
            },
            e => write_err(e.into()),
        };
        match h.kind {
            EntryKind::Dir => {
                rustix::fs::mkdirat(dir, name, Mode::RWXU).map_err(exists)?;
                self.dirs.push((h.path, h.mode, h.mtime));
                self.stats.dirs += 1;
            }
            EntryKind::File { size } => {
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(dir, name, flags, Mode::RUSR | Mode::WUSR)
                    .map_err(exists)?;
                self.file = Some((File::from(fd), h.path, h.mode, h.mtime));
                self.stats.files += 1;
                self.stats.bytes += size;
            }
            EntryKind::Symlink { target } => {
                rustix::fs::symlinkat(OsStr::from_bytes(&target), dir, name).map_err(exists)?;
                rustix::fs::utimensat(dir, name, &timestamps(h.mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| write_err(e.into()))?;
                self.stats.symlinks += 1;
            }
        }
        Ok(())
    }

    /// Gives the written file its mode and mtime.
    fn close_file(&mut self) -> Result<(), ArchiveError> {
        let Some((file, path, mode, mtime)) = self.file.take() else {
            return Ok(());
        };
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
            .and_then(|()| rustix::fs::futimens(&file, &timestamps(mtime)))
            .map_err(|e| ArchiveError::Write {
                path: rel_path(&path),
                source: e.into(),
            })
    }
}

impl Drop for Unpacker {
    fn drop(&mut self) {
        self.file = None;
        match std::mem::replace(&mut self.state, State::Done) {
            State::Empty | State::Done => {}
            State::Tree(cursor) => {
                drop(cursor);
                let _ = remove_tree_at(self.parent.as_fd(), &self.temp);
            }
            State::Leaf => {
                let _ = remove_tree_at(self.parent.as_fd(), &self.temp);
            }
        }
    }
}
