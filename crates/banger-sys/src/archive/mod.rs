//! Real files to and from the `banger_proto::archive` stream, the same code
//! in the guest agent and on the host: [`pack`] and [`pack_list`] write an
//! archive of what is on disk, [`Unpacker`] turns one into a tree that
//! replaces its destination only once it is complete. Owns the file I/O and
//! the path safety of both; owns no transport and no wire format.
//!
//! Safety rules, whoever sent the archive:
//!
//! 1. Every entry path has passed `check_path` in the decoder (no `..`, no
//!    absolute path, no `.` or empty component, bounded lengths).
//! 2. Entries are created beneath a fresh temporary directory, one
//!    component at a time relative to directory fds, never following a
//!    symlink (`at.rs`): a symlink the archive created earlier cannot be
//!    walked through, and neither can one a process plants meanwhile.
//! 3. Files are created with `O_EXCL`: an entry never overwrites another.
//! 4. The destination's parent is opened once, at [`Unpacker::begin`];
//!    everything after is relative to that fd, so replacing the parent's
//!    path with a symlink meanwhile redirects nothing.
//! 5. Only a complete archive (end marker seen) is swapped in; anything
//!    else leaves the destination as it was and removes the temporary.
//!
//! Kept: the tree shape, file contents, permission bits (including
//! set-id bits), modification times (whole seconds), symlinks as symlinks.
//! Not kept: owners, hard links, extended attributes. Sockets, FIFOs and
//! devices are left out of a pack and reported in [`Stats::skipped`].

use std::io;
use std::path::PathBuf;

use banger_proto::archive::ArchiveError as FormatError;

mod at;
mod pack;
mod unpack;

pub use pack::{pack, pack_list};
pub use unpack::Unpacker;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("the directory that would hold {} does not exist: create it first", dest.display())]
    ParentMissing { dest: PathBuf },
    #[error("{} cannot be replaced: it has no final name", dest.display())]
    NoName { dest: PathBuf },
    #[error("invalid archive")]
    Format {
        #[source]
        source: FormatError,
    },
    #[error("archive entry {} lies beneath a symlink or a non-directory: refusing to follow it", path.display())]
    BeneathNonDirectory { path: PathBuf },
    #[error("archive entry {} lies in a directory the archive did not create first", path.display())]
    ParentNotCreated { path: PathBuf },
    #[error("archive entry {} appears twice", path.display())]
    Duplicate { path: PathBuf },
    #[error("{} changed while it was being packed", path.display())]
    Changed { path: PathBuf },
    #[error("reading {} failed", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {} failed", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the archive failed")]
    Output {
        #[source]
        source: io::Error,
    },
    #[error("putting the new {} in place failed", dest.display())]
    Swap {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("an earlier error ended this unpack")]
    Poisoned,
}

impl ArchiveError {
    /// Whether the archive itself is at fault (rather than the disk).
    pub fn is_bad_archive(&self) -> bool {
        matches!(
            self,
            ArchiveError::Format { .. }
                | ArchiveError::BeneathNonDirectory { .. }
                | ArchiveError::ParentNotCreated { .. }
                | ArchiveError::Duplicate { .. }
        )
    }
}

impl From<FormatError> for ArchiveError {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::Io { source } => ArchiveError::Output { source },
            source => ArchiveError::Format { source },
        }
    }
}

/// What a pack or an unpack moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Directories, the root included when it is one.
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    /// File content bytes.
    pub bytes: u64,
    /// What a pack left out, with paths relative to its root.
    pub skipped: Vec<Skipped>,
}

impl Stats {
    /// The counts as the agent reports them.
    pub fn to_wire(&self) -> banger_proto::ArchiveStats {
        banger_proto::ArchiveStats {
            files: self.files,
            dirs: self.dirs,
            symlinks: self.symlinks,
            bytes: self.bytes,
            skipped: self.skipped.len() as u64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    Socket,
    Fifo,
    Device,
    /// A listed path that is not on disk (a tracked file deleted from the checkout).
    Missing,
    /// A listed path beneath something that is not a directory.
    BeneathNonDirectory,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::Socket => "a socket",
            SkipReason::Fifo => "a FIFO",
            SkipReason::Device => "a device",
            SkipReason::Missing => "missing",
            SkipReason::BeneathNonDirectory => "beneath a symlink or a non-directory",
        })
    }
}

/// An archive path as a path, for messages and [`Skipped`].
fn rel_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(test)]
mod tests;
