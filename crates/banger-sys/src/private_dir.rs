//! Directories and files only their owner may use. banger's state, runtime
//! and cache directories are made and checked here before anything in them
//! is trusted: the socket the CLI talks to, the guest data the daemon keeps.
//! Which directories need this is the caller's decision, not this module's.
//!
//! [`ensure_private_dir`], step by step:
//!
//! 1. Make the parents as usual: they are the user's own XDG directories,
//!    or a shared one such as `/tmp`.
//! 2. `mkdir` the directory itself with mode 0700. One that exists is kept,
//!    whatever it is: `mkdir` never follows a symlink in its last component.
//! 3. `lstat` it: a symlink, anything but a directory, or a directory that
//!    another uid owns is refused, with an error naming the path and owner.
//! 4. Open it with `O_NOFOLLOW | O_DIRECTORY` and check the handle again, so
//!    the owner check and the fix apply to the same object even if the path
//!    is swapped in between; a directory of ours with group or other bits
//!    (made by an older banger, or under a loose umask) is `fchmod`ed to 0700.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// Why a directory or file cannot be trusted as private.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot inspect {}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is a symlink to {}, not a directory: remove it", path.display(), target.display())]
    Symlink { path: PathBuf, target: PathBuf },
    #[error("{} is not a {expected}: remove it", path.display())]
    WrongKind {
        path: PathBuf,
        expected: &'static str,
    },
    #[error(
        "{} belongs to uid {owner}, not to you (uid {you}): another user may have made it to impersonate banger; remove it (it may take root)",
        path.display()
    )]
    NotOwned { path: PathBuf, owner: u32, you: u32 },
    #[error("cannot restrict {} to its owner", path.display())]
    Restrict {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Makes `path` a directory only the effective user can enter (mode 0700),
/// or checks and tightens the one that is there; see the module doc.
pub fn ensure_private_dir(path: &Path) -> Result<(), PrivateDirError> {
    ensure_private_dir_of(path, crate::process::euid())
}

fn ensure_private_dir_of(path: &Path, you: u32) -> Result<(), PrivateDirError> {
    let create = |source| PrivateDirError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(create)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(create(e)),
    }
    check_kind(path, "directory", you)?;
    let inspect = |source: rustix::io::Errno| PrivateDirError::Inspect {
        path: path.to_path_buf(),
        source: source.into(),
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = rustix::fs::open(path, flags, Mode::empty()).map_err(inspect)?;
    let stat = rustix::fs::fstat(&dir).map_err(inspect)?;
    if stat.st_uid != you {
        return Err(PrivateDirError::NotOwned {
            path: path.to_path_buf(),
            owner: stat.st_uid,
            you,
        });
    }
    if stat.st_mode & 0o7777 != 0o700 {
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o700)).map_err(|e| {
            PrivateDirError::Restrict {
                path: path.to_path_buf(),
                source: e.into(),
            }
        })?;
    }
    Ok(())
}

/// Whether the socket at `path` exists; an error when something there is
/// not a socket or belongs to another uid (it could be anyone's server).
pub fn check_own_socket(path: &Path) -> Result<bool, PrivateDirError> {
    match check_kind(path, "socket", crate::process::euid()) {
        Ok(()) => Ok(true),
        Err(PrivateDirError::Inspect { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Makes `path` a regular file only its owner may read (mode 0600): created
/// if missing, never through a symlink, tightened if it is ours and wider.
pub fn ensure_private_file(path: &Path) -> Result<(), PrivateDirError> {
    let you = crate::process::euid();
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => {
                check_kind(path, "file", you)
                    .err()
                    .unwrap_or(PrivateDirError::Create {
                        path: path.to_path_buf(),
                        source,
                    })
            }
            _ => PrivateDirError::Create {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let meta = file.metadata().map_err(|source| PrivateDirError::Inspect {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(PrivateDirError::WrongKind {
            path: path.to_path_buf(),
            expected: "file",
        });
    }
    if meta.uid() != you {
        return Err(PrivateDirError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            you,
        });
    }
    if meta.mode() & 0o7777 != 0o600 {
        rustix::fs::fchmod(&file, Mode::from_raw_mode(0o600)).map_err(|e| {
            PrivateDirError::Restrict {
                path: path.to_path_buf(),
                source: e.into(),
            }
        })?;
    }
    Ok(())
}

/// Sets the process's umask so everything it creates is its owner's alone;
/// returns the previous one. Process-wide: call it before any thread starts.
pub fn owner_only_umask() -> u32 {
    rustix::process::umask(Mode::from_raw_mode(0o077)).bits()
}

/// `lstat`s `path` and refuses a symlink, the wrong kind of file, or another
/// uid's; `expected` is "directory", "socket" or "file".
fn check_kind(path: &Path, expected: &'static str, you: u32) -> Result<(), PrivateDirError> {
    let meta = fs::symlink_metadata(path).map_err(|source| PrivateDirError::Inspect {
        path: path.to_path_buf(),
        source,
    })?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(PrivateDirError::Symlink {
            path: path.to_path_buf(),
            target: fs::read_link(path).unwrap_or_default(),
        });
    }
    let right = match expected {
        "directory" => kind.is_dir(),
        "socket" => kind.is_socket(),
        _ => kind.is_file(),
    };
    if !right {
        return Err(PrivateDirError::WrongKind {
            path: path.to_path_buf(),
            expected,
        });
    }
    if meta.uid() != you {
        return Err(PrivateDirError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            you,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_missing_directory_is_made_owner_only_with_its_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/banger");
        ensure_private_dir(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_wide_open_directory_of_ours_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("banger-1000");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_symlink_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o755)).unwrap();
        let link = tmp.path().join("banger-1000");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let err = ensure_private_dir(&link).unwrap_err();
        assert!(matches!(err, PrivateDirError::Symlink { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "{} is a symlink to {}, not a directory: remove it",
                link.display(),
                elsewhere.display()
            )
        );
        assert_eq!(mode(&elsewhere), 0o755, "the target is not touched");
    }

    #[test]
    fn a_directory_of_another_uid_is_refused_naming_the_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("banger-1000");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let owner = crate::process::euid();
        // As seen by a user with another uid than the directory's owner.
        let you = owner.wrapping_add(1);
        let err = ensure_private_dir_of(&dir, you).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "{} belongs to uid {owner}, not to you (uid {you})",
                dir.display()
            )),
            "{err}"
        );
        assert_eq!(mode(&dir), 0o777, "another user's directory is not changed");
    }

    #[test]
    fn a_directory_chowned_to_nobody_is_refused() {
        if crate::process::euid() != 0 {
            crate::skip_test("chown to another uid needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("banger-0");
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let err = ensure_private_dir(&dir).unwrap_err();
        assert!(
            matches!(err, PrivateDirError::NotOwned { owner: 65534, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_file_where_the_directory_should_be_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("banger-1000");
        fs::write(&file, "").unwrap();
        let err = ensure_private_dir(&file).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{} is not a directory: remove it", file.display())
        );
    }

    #[test]
    fn only_an_own_socket_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("bangerd.sock");
        assert!(!check_own_socket(&sock).unwrap(), "missing is not an error");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(check_own_socket(&sock).unwrap());
        let file = tmp.path().join("plain");
        fs::write(&file, "").unwrap();
        let err = check_own_socket(&file).unwrap_err();
        assert!(err.to_string().contains("is not a socket"), "{err}");
    }

    #[test]
    fn a_private_file_is_made_or_tightened_but_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("bangerd.log");
        ensure_private_file(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
        fs::set_permissions(&log, fs::Permissions::from_mode(0o644)).unwrap();
        ensure_private_file(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
        let link = tmp.path().join("link.log");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        let err = ensure_private_file(&link).unwrap_err();
        assert!(matches!(err, PrivateDirError::Symlink { .. }), "{err:?}");
    }
}
