//! Where mmdebstrap builds its chroot (its `TMPDIR`). Owns choosing and
//! making that directory; not the installer's command line
//! ([`super::bootstrap`]) nor the staging directory the image is made in
//! ([`crate::staging`]).
//!
//! As root, and in fakeroot mode (which runs as the build's user), the
//! chroot sits in the staging directory beside the image. In unshare mode it
//! cannot: the chroot belongs to the user namespace's root, a subordinate
//! uid that is nobody to the build's user's files, and it cannot search a
//! 0700 home or state directory (what `adduser` makes on Debian). So:
//!
//! 1. [`Host::probe`](super::bootstrap::Host::probe) picks a base with
//!    [`reachable_base`]: the first of `$TMPDIR`, `/var/tmp` (on disk, where
//!    `/tmp` may be a small tmpfs) and `/tmp` that every user can reach,
//!    each directory from `/` down searchable by others.
//! 2. [`ChrootDir::new`] makes a private directory there, mode 0711: the
//!    namespace's root (and its `_apt`) can pass through it, nobody else
//!    can list it. mmdebstrap makes its chroot inside under a random name
//!    and removes it when it is done; the private directory goes when the
//!    [`ChrootDir`] is dropped.
//!
//! What stays out of that directory: the tarball, which mmdebstrap's outer
//! process writes as the build's user into the 0700 staging directory; the
//! package cache and the kernel's modules, which its special hooks
//! (`sync-in`, `copy-in`, `sync-out`) read and write from that outer
//! process. The chroot itself holds only what apt installs; the ssh host
//! keys openssh-server's postinst makes there are not the image's (the
//! image gets none, see [`super::tree::prepare`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::DebianError;

/// Tried after `$TMPDIR`, in order.
pub const BASES: &[&str] = &["/var/tmp", "/tmp"];

/// The private directory's mode: searchable, not listable, by others.
const PRIVATE_MODE: u32 = 0o711;

/// The first of `candidates` that is a directory every user can reach:
/// it and each directory above it has the others' search bit.
pub fn reachable_base(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates
        .iter()
        .filter(|c| c.is_absolute())
        .filter_map(|c| fs::canonicalize(c).ok())
        .find(|c| c.is_dir() && searchable_by_others(c))
}

/// True when a user who is neither owner nor group member can reach `dir`
/// (canonical): `dir` and every ancestor has `o+x`.
pub fn searchable_by_others(dir: &Path) -> bool {
    dir.ancestors()
        .all(|d| fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// The directory mmdebstrap's chroot goes in, for as long as it lives.
#[derive(Debug)]
pub enum ChrootDir<'a> {
    /// The staging directory (root, fakeroot).
    Beside(&'a Path),
    /// A private directory under a base others can reach (unshare).
    Private(TempDir),
}

impl<'a> ChrootDir<'a> {
    /// In a private directory under `base` when there is one, else
    /// `staging`.
    pub fn new(base: Option<&Path>, staging: &'a Path) -> Result<ChrootDir<'a>, DebianError> {
        let Some(base) = base else {
            return Ok(ChrootDir::Beside(staging));
        };
        let err = |source| DebianError::ChrootDir {
            base: base.to_path_buf(),
            source,
        };
        let dir = tempfile::Builder::new()
            .prefix("banger-debian-")
            .tempdir_in(base)
            .map_err(err)?;
        // Set after creation: the umask would narrow a mode given to mkdir.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(PRIVATE_MODE)).map_err(err)?;
        Ok(ChrootDir::Private(dir))
    }

    pub fn path(&self) -> &Path {
        match self {
            ChrootDir::Beside(dir) => dir,
            ChrootDir::Private(dir) => dir.path(),
        }
    }
}

/// `$TMPDIR` (when set) and then [`BASES`].
pub fn candidates(tmpdir: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    tmpdir
        .map(PathBuf::from)
        .into_iter()
        .chain(BASES.iter().map(PathBuf::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn dir_with_mode(parent: &Path, name: &str, mode: u32) -> PathBuf {
        let dir = parent.join(name);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    /// A temporary directory others can reach (the test's own `TMPDIR` may
    /// sit anywhere).
    fn open_root() -> TempDir {
        let root = tempfile::tempdir_in("/tmp").unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        root
    }

    #[test]
    fn a_base_under_a_0700_home_is_passed_over_for_one_others_can_reach() {
        let root = open_root();
        let home = dir_with_mode(root.path(), "home", 0o700);
        let tmp_in_home = dir_with_mode(&home, "tmp", 0o1777);
        let shared = dir_with_mode(root.path(), "var-tmp", 0o1777);
        assert!(!searchable_by_others(&tmp_in_home));
        assert_eq!(reachable_base(&[tmp_in_home, shared.clone()]), Some(shared));
    }

    #[test]
    fn missing_relative_and_file_candidates_are_skipped() {
        let root = open_root();
        let file = root.path().join("file");
        fs::write(&file, "x").unwrap();
        let candidates = [root.path().join("missing"), PathBuf::from("relative"), file];
        assert_eq!(reachable_base(&candidates), None);
    }

    #[test]
    fn tmpdir_comes_before_the_system_bases() {
        assert_eq!(
            candidates(Some(std::ffi::OsStr::new("/scratch"))),
            ["/scratch", "/var/tmp", "/tmp"].map(PathBuf::from)
        );
        assert_eq!(candidates(None), ["/var/tmp", "/tmp"].map(PathBuf::from));
    }

    #[test]
    fn private_chroot_dir_is_searchable_not_listable_and_goes_when_dropped() {
        let root = open_root();
        let staging = root.path().join("staging");
        let dir = ChrootDir::new(Some(root.path()), &staging).unwrap();
        let path = dir.path().to_path_buf();
        assert!(path.starts_with(root.path()), "{path:?}");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o711);
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn without_a_base_the_chroot_goes_beside_the_image() {
        let staging = PathBuf::from("/state/images/debian.tmp-x");
        let dir = ChrootDir::new(None, &staging).unwrap();
        assert_eq!(dir.path(), staging);
    }

    #[test]
    fn a_base_that_cannot_be_written_is_named_in_the_error() {
        let root = open_root();
        let missing = root.path().join("missing");
        let err = ChrootDir::new(Some(&missing), root.path()).unwrap_err();
        assert!(
            matches!(&err, DebianError::ChrootDir { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "could not make a directory for mmdebstrap's chroot in {}",
                missing.display()
            )),
            "{err}"
        );
    }
}
