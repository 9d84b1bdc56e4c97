//! What an entry path inside an archive may be. Owns the rules and their
//! error messages; resolving a path on a real filesystem is
//! `banger_sys::archive`'s.
//!
//! A path is a relative, `/`-separated byte string (names are bytes, not
//! UTF-8). Rejected: an empty path (only the archive's root has one, and
//! the decoder handles it before calling [`check_path`]), a leading `/`, a
//! trailing `/`, an empty component (`a//b`), `.` and `..` components, a
//! NUL byte, a component over [`MAX_NAME`] bytes and a path over
//! [`MAX_PATH`] bytes.
//!
//! Only `.` and `..` are special to the kernel, so names such as `...`,
//! `....`, `..a`, `.git` or `a\..\b` (a backslash is an ordinary byte on
//! Linux) are legal and accepted.

/// Longest entry path, in bytes (the kernel's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Longest single name, in bytes (the kernel's `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// Why an entry path was rejected; every message names the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("archive path is empty: only the archive's root has an empty path")]
    Empty,
    #[error("archive path {path:?} is absolute: entry paths must be relative")]
    Absolute { path: String },
    #[error("archive path {path:?} has a `..` component: entries may not climb out of their root")]
    ParentDir { path: String },
    #[error("archive path {path:?} has a `.` component: entry paths must be normalised")]
    CurrentDir { path: String },
    #[error("archive path {path:?} has an empty component (`//`): entry paths must be normalised")]
    EmptyComponent { path: String },
    #[error("archive path {path:?} ends with `/`: entry paths must not")]
    TrailingSlash { path: String },
    #[error("archive path {path:?} contains a NUL byte")]
    Nul { path: String },
    #[error("archive path {path:?}… is {len} bytes long, over the limit of {MAX_PATH}")]
    TooLong { path: String, len: usize },
    #[error("archive path {path:?} has a name of {len} bytes, over the limit of {MAX_NAME}")]
    NameTooLong { path: String, len: usize },
}

/// Checks one non-root entry path against the rules of the module doc.
pub fn check_path(path: &[u8]) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong {
            path: lossy(&path[..64]),
            len: path.len(),
        });
    }
    let shown = || lossy(path);
    if path.contains(&0) {
        return Err(PathError::Nul { path: shown() });
    }
    if path[0] == b'/' {
        return Err(PathError::Absolute { path: shown() });
    }
    if path.ends_with(b"/") {
        return Err(PathError::TrailingSlash { path: shown() });
    }
    for name in path.split(|&b| b == b'/') {
        match name {
            b"" => return Err(PathError::EmptyComponent { path: shown() }),
            b"." => return Err(PathError::CurrentDir { path: shown() }),
            b".." => return Err(PathError::ParentDir { path: shown() }),
            _ if name.len() > MAX_NAME => {
                return Err(PathError::NameTooLong {
                    path: shown(),
                    len: name.len(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// A path for a message: invalid UTF-8 becomes U+FFFD.
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
