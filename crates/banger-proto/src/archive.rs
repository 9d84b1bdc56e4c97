//! The archive format files and directory trees travel in between host and
//! guest (`unpack`, `pack`): an encoder that writes it and a push decoder
//! that validates it. Owns the byte layout and every bound on what a peer
//! may make the other side buffer; owns no file I/O (that is
//! `banger_sys::archive`).
//!
//! The stream, all integers big-endian:
//!
//! 1. Entries, each a header: `kind: u8` (1 dir, 2 file, 3 symlink),
//!    `mode: u32` (permission bits, nothing outside `0o7777`), `mtime: i64`
//!    (unix seconds), `path_len: u16`, `path_len` path bytes; then
//!    - a file: `size: u64` and `size` content bytes,
//!    - a symlink: `target_len: u16` and `target_len` target bytes,
//!    - a directory: nothing more.
//! 2. The end marker: the single byte `0`.
//!
//! The first entry is the archive's root and has the empty path: a
//! directory for a tree, or a lone file or symlink followed directly by the
//! end marker. Every other path passes [`check_path`]; parents come before
//! their children. Symlink targets are data: never empty, no NUL, at most
//! [`MAX_TARGET`] bytes, and never followed by an unpacker.

use std::collections::VecDeque;
use std::io::Write;

mod path;

pub use path::{MAX_NAME, MAX_PATH, PathError, check_path, lossy};

/// Longest symlink target, in bytes.
pub const MAX_TARGET: usize = 4096;
/// Permission bits an entry may carry.
pub const MODE_MASK: u32 = 0o7777;

const END: u8 = 0;
const DIR: u8 = 1;
const FILE: u8 = 2;
const SYMLINK: u8 = 3;
/// `kind`, `mode`, `mtime`, `path_len`.
const FIXED: usize = 1 + 4 + 8 + 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// Followed by `size` bytes of [`Event::Data`].
    File {
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// Relative path; empty for the archive's root.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits (at most [`MODE_MASK`]); ignored for symlinks.
    pub mode: u32,
    /// Modification time, unix seconds.
    pub mtime: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Entry(EntryHeader),
    /// The next bytes of the current file's content.
    Data(Vec<u8>),
    /// The end marker: the archive is complete.
    End,
}

/// Why a stream is not a valid archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("archive entry has unknown kind {kind}")]
    UnknownKind { kind: u8 },
    #[error(
        "archive entry {path:?} has mode {mode:#o}, outside the permission bits {MODE_MASK:#o}"
    )]
    BadMode { path: String, mode: u32 },
    #[error("archive path of {len} bytes is over the limit of {MAX_PATH}")]
    PathTooLong { len: usize },
    #[error("symlink {path:?} has a target of {len} bytes, over the limit of {MAX_TARGET}")]
    TargetTooLong { path: String, len: usize },
    #[error("symlink {path:?} has an empty target")]
    EmptyTarget { path: String },
    #[error("symlink {path:?} has a NUL byte in its target")]
    TargetNul { path: String },
    #[error(
        "archive does not start with its root (an entry with the empty path) but with {path:?}"
    )]
    NoRoot { path: String },
    #[error("archive ends before its root entry: an archive holds at least its root")]
    EndBeforeRoot,
    #[error("archive has entry {path:?} after a root that is not a directory")]
    EntryAfterLeafRoot { path: String },
    #[error("archive has bytes after its end marker")]
    TrailingBytes,
    #[error("archive ended without its end marker")]
    Truncated,
    #[error("archive entry {path:?} declared {declared} bytes but {written} were written")]
    SizeMismatch {
        path: String,
        declared: u64,
        written: u64,
    },
    #[error("writing the archive failed")]
    Io {
        #[source]
        source: std::io::Error,
    },
}

/// Writes an archive, checking what it writes as the decoder will.
pub struct Encoder<W: Write> {
    out: W,
    /// The file whose content is being written, and how much is still owed.
    open: Option<(Vec<u8>, u64, u64)>,
    entries: u64,
    leaf_root: bool,
}

impl<W: Write> Encoder<W> {
    pub fn new(out: W) -> Self {
        Encoder {
            out,
            open: None,
            entries: 0,
            leaf_root: false,
        }
    }

    pub fn dir(&mut self, path: &[u8], mode: u32, mtime: i64) -> Result<(), ArchiveError> {
        self.header(DIR, path, mode, mtime)?;
        self.put(&[])
    }

    /// Starts a file of `size` bytes; its content follows through [`Encoder::data`].
    pub fn file(
        &mut self,
        path: &[u8],
        mode: u32,
        mtime: i64,
        size: u64,
    ) -> Result<(), ArchiveError> {
        self.header(FILE, path, mode, mtime)?;
        self.put(&size.to_be_bytes())?;
        if size > 0 {
            self.open = Some((path.to_vec(), size, 0));
        }
        Ok(())
    }

    /// The next bytes of the current file; never more than it declared.
    pub fn data(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let Some((path, size, written)) = self.open.as_mut() else {
            return Err(ArchiveError::SizeMismatch {
                path: String::new(),
                declared: 0,
                written: bytes.len() as u64,
            });
        };
        let now = *written + bytes.len() as u64;
        if now > *size {
            return Err(ArchiveError::SizeMismatch {
                path: lossy(path),
                declared: *size,
                written: now,
            });
        }
        *written = now;
        if now == *size {
            self.open = None;
        }
        self.put(bytes)
    }

    pub fn symlink(&mut self, path: &[u8], mtime: i64, target: &[u8]) -> Result<(), ArchiveError> {
        check_target(path, target)?;
        self.header(SYMLINK, path, 0o777, mtime)?;
        self.put(&(target.len() as u16).to_be_bytes())?;
        self.put(target)
    }

    /// Writes the end marker and hands back the writer.
    pub fn end(mut self) -> Result<W, ArchiveError> {
        self.check_no_open_file()?;
        if self.entries == 0 {
            return Err(ArchiveError::EndBeforeRoot);
        }
        self.put(&[END])?;
        self.out
            .flush()
            .map_err(|source| ArchiveError::Io { source })?;
        Ok(self.out)
    }

    fn header(&mut self, kind: u8, path: &[u8], mode: u32, mtime: i64) -> Result<(), ArchiveError> {
        self.check_no_open_file()?;
        check_sequence(self.entries, self.leaf_root, path)?;
        if mode & !MODE_MASK != 0 {
            return Err(ArchiveError::BadMode {
                path: lossy(path),
                mode,
            });
        }
        self.leaf_root |= self.entries == 0 && kind != DIR;
        self.entries += 1;
        let mut hdr = Vec::with_capacity(FIXED + path.len());
        hdr.push(kind);
        hdr.extend_from_slice(&mode.to_be_bytes());
        hdr.extend_from_slice(&mtime.to_be_bytes());
        hdr.extend_from_slice(&(path.len() as u16).to_be_bytes());
        hdr.extend_from_slice(path);
        self.put(&hdr)
    }

    fn check_no_open_file(&self) -> Result<(), ArchiveError> {
        match &self.open {
            Some((path, size, written)) => Err(ArchiveError::SizeMismatch {
                path: lossy(path),
                declared: *size,
                written: *written,
            }),
            None => Ok(()),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.out
            .write_all(bytes)
            .map_err(|source| ArchiveError::Io { source })
    }
}

/// The root first, with the empty path; nothing after a file or symlink root.
fn check_sequence(entries: u64, leaf_root: bool, path: &[u8]) -> Result<(), ArchiveError> {
    if entries == 0 {
        if !path.is_empty() {
            return Err(ArchiveError::NoRoot { path: lossy(path) });
        }
        return Ok(());
    }
    if leaf_root {
        return Err(ArchiveError::EntryAfterLeafRoot { path: lossy(path) });
    }
    check_path(path)?;
    Ok(())
}

fn check_target(path: &[u8], target: &[u8]) -> Result<(), ArchiveError> {
    if target.is_empty() {
        return Err(ArchiveError::EmptyTarget { path: lossy(path) });
    }
    if target.len() > MAX_TARGET {
        return Err(ArchiveError::TargetTooLong {
            path: lossy(path),
            len: target.len(),
        });
    }
    if target.contains(&0) {
        return Err(ArchiveError::TargetNul { path: lossy(path) });
    }
    Ok(())
}

/// A push parser: [`Decoder::feed`] bytes as they arrive, then drain
/// [`Decoder::next_event`]. It buffers at most one header (bounded by
/// [`MAX_PATH`] and [`MAX_TARGET`]); content passes straight through as
/// [`Event::Data`]. After the first error the decoder is not to be used.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The header read so far.
    header: Vec<u8>,
    /// Content bytes the current file still owes.
    remaining: u64,
    entries: u64,
    leaf_root: bool,
    ended: bool,
    events: VecDeque<Event>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `bytes`, queueing the events they complete.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ArchiveError> {
        while !bytes.is_empty() {
            if self.ended {
                return Err(ArchiveError::TrailingBytes);
            }
            if self.remaining > 0 {
                let n = (self.remaining.min(bytes.len() as u64)) as usize;
                self.events.push_back(Event::Data(bytes[..n].to_vec()));
                self.remaining -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let need = header_len(&self.header)?;
            if self.header.len() < need {
                let n = (need - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
            }
            // A header is whole once the length it implies stops growing.
            if self.header.len() == need && header_len(&self.header)? == need {
                self.complete_header()?;
            }
        }
        Ok(())
    }

    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether the end marker has been read.
    pub fn is_complete(&self) -> bool {
        self.ended
    }

    /// `Ok` once the end marker has been read, [`ArchiveError::Truncated`] before.
    pub fn check_complete(&self) -> Result<(), ArchiveError> {
        if self.ended {
            Ok(())
        } else {
            Err(ArchiveError::Truncated)
        }
    }

    fn complete_header(&mut self) -> Result<(), ArchiveError> {
        let h = std::mem::take(&mut self.header);
        if h[0] == END {
            if self.entries == 0 {
                return Err(ArchiveError::EndBeforeRoot);
            }
            self.ended = true;
            self.events.push_back(Event::End);
            return Ok(());
        }
        let mode = u32::from_be_bytes(h[1..5].try_into().expect("4 bytes"));
        let mtime = i64::from_be_bytes(h[5..13].try_into().expect("8 bytes"));
        let path_end = FIXED + usize::from(u16::from_be_bytes([h[13], h[14]]));
        let path = h[FIXED..path_end].to_vec();
        check_sequence(self.entries, self.leaf_root, &path)?;
        if mode & !MODE_MASK != 0 {
            return Err(ArchiveError::BadMode {
                path: lossy(&path),
                mode,
            });
        }
        let kind = match h[0] {
            DIR => EntryKind::Dir,
            FILE => {
                let size = u64::from_be_bytes(h[path_end..path_end + 8].try_into().expect("8"));
                self.remaining = size;
                EntryKind::File { size }
            }
            _ => {
                let target = h[path_end + 2..].to_vec();
                check_target(&path, &target)?;
                EntryKind::Symlink { target }
            }
        };
        self.leaf_root |= self.entries == 0 && h[0] != DIR;
        self.entries += 1;
        self.events.push_back(Event::Entry(EntryHeader {
            path,
            kind,
            mode,
            mtime,
        }));
        Ok(())
    }
}

/// How long the header that starts `h` is, as far as `h` tells; rejects an
/// unknown kind or an over-long length as soon as it is visible.
fn header_len(h: &[u8]) -> Result<usize, ArchiveError> {
    let Some(&kind) = h.first() else {
        return Ok(1);
    };
    match kind {
        END => return Ok(1),
        DIR | FILE | SYMLINK => {}
        kind => return Err(ArchiveError::UnknownKind { kind }),
    }
    if h.len() < FIXED {
        return Ok(FIXED);
    }
    let path_len = usize::from(u16::from_be_bytes([h[13], h[14]]));
    if path_len > MAX_PATH {
        return Err(ArchiveError::PathTooLong { len: path_len });
    }
    let path_end = FIXED + path_len;
    match kind {
        DIR => Ok(path_end),
        FILE => Ok(path_end + 8),
        _ if h.len() < path_end + 2 => Ok(path_end + 2),
        _ => {
            let len = usize::from(u16::from_be_bytes([h[path_end], h[path_end + 1]]));
            if len > MAX_TARGET {
                return Err(ArchiveError::TargetTooLong {
                    path: lossy(&h[FIXED..path_end]),
                    len,
                });
            }
            Ok(path_end + 2 + len)
        }
    }
}

/// The numbers an archive operation reports (the `unpack` and `pack` answers).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ArchiveStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// File content bytes.
    pub bytes: u64,
    /// Entries left out: sockets, devices, FIFOs, listed paths that are gone.
    #[serde(default)]
    pub skipped: u64,
}

#[cfg(test)]
#[path = "archive/tests.rs"]
mod tests;
