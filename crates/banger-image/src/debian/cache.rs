//! The `.deb` cache of the `debian` preset, `<cache>/debian-archives/<suite>`:
//! what apt used in the last good build of a suite, so the next build of
//! the same packages downloads nothing. Owns the directory and its
//! all-or-nothing replacement; copying packages in and out of the chroot
//! is the installer's ([`super::bootstrap`]).
//!
//! 1. [`ArchiveCache::open`] makes the suite's directory and a fresh
//!    `.<suite>.new-XXXXXX` beside it.
//! 2. The installer copies the cache in before apt runs, and everything apt
//!    had (downloaded or reused) out into the fresh directory.
//! 3. [`ArchiveCache::commit`], after a good build, drops what is not a
//!    `.deb` from the fresh directory and puts it in the old one's place:
//!    the cache holds exactly the last good build's packages, and old
//!    versions never pile up. A failed build drops the fresh directory and
//!    keeps the old cache. Two builds of a suite at once both read the old
//!    cache; the last to finish leaves its packages. Should a commit fail
//!    anyway, the build goes on with a note: only the next build pays.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::DebianError;

/// `<cache>/debian-archives/<suite>` and the fresh directory that replaces
/// it after a good build (step 3 of the module doc).
pub struct ArchiveCache {
    /// `<cache>/debian-archives`.
    root: PathBuf,
    suite: String,
    fresh: TempDir,
}

impl ArchiveCache {
    pub fn open(cache_dir: &Path, suite: &str) -> Result<ArchiveCache, DebianError> {
        let root = cache_dir.join("debian-archives");
        let cache_err = |source| DebianError::Cache {
            path: root.clone(),
            source,
        };
        fs::create_dir_all(root.join(suite)).map_err(cache_err)?;
        let fresh = tempfile::Builder::new()
            .prefix(&format!(".{suite}.new-"))
            .tempdir_in(&root)
            .map_err(cache_err)?;
        Ok(ArchiveCache {
            root,
            suite: suite.to_string(),
            fresh,
        })
    }

    /// `<cache>/debian-archives`, mmdebstrap's working directory: its
    /// special hooks take paths relative to it, so no path in a hook
    /// command can contain a space.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn suite(&self) -> &str {
        &self.suite
    }

    /// The fresh directory's name in [`ArchiveCache::root`]: the installer
    /// copies the packages it used there.
    pub fn fresh_name(&self) -> std::borrow::Cow<'_, str> {
        self.fresh
            .path()
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.suite)
    }

    /// How many packages the cache holds.
    pub fn count(&self) -> usize {
        count_debs(&self.dir())
    }

    /// Makes what the last install copied out the cache; returns how many
    /// packages it holds.
    pub fn commit(self) -> Result<usize, DebianError> {
        let cache_err = |source| DebianError::Cache {
            path: self.root.clone(),
            source,
        };
        let fresh = self.fresh.path();
        // apt's lock file and partial/ directory came along.
        for entry in fs::read_dir(fresh).map_err(cache_err)? {
            let path = entry.map_err(cache_err)?.path();
            if path.extension().is_none_or(|e| e != "deb") {
                match path.is_dir() {
                    true => fs::remove_dir_all(&path),
                    false => fs::remove_file(&path),
                }
                .map_err(cache_err)?;
            }
        }
        let count = count_debs(fresh);
        if count == 0 {
            // Nothing came out (debootstrap, fakeroot mode): keep the old.
            return Ok(self.count());
        }
        // The old cache moves into a temporary directory that takes it
        // away when dropped; another build may have moved it already.
        let old = tempfile::Builder::new()
            .prefix(&format!(".{}.old-", self.suite))
            .tempdir_in(&self.root)
            .map_err(cache_err)?;
        match fs::rename(self.dir(), old.path().join(&self.suite)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(cache_err(e)),
            _ => {}
        }
        fs::rename(fresh, self.dir()).map_err(cache_err)?;
        let _ = self.fresh.keep();
        Ok(count)
    }
}

fn count_debs(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "deb"))
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_becomes_what_the_last_install_copied_out() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArchiveCache::open(dir.path(), "bookworm").unwrap();
        fs::write(cache.dir().join("old_1_all.deb"), b"").unwrap();
        assert_eq!(cache.count(), 1);
        fs::write(cache.fresh.path().join("git_1_amd64.deb"), b"").unwrap();
        fs::write(cache.fresh.path().join("bash_5_amd64.deb"), b"").unwrap();
        fs::write(cache.fresh.path().join("lock"), b"").unwrap();
        fs::create_dir(cache.fresh.path().join("partial")).unwrap();
        let kept = cache.commit().unwrap();
        assert_eq!(kept, 2);
        let root = dir.path().join("debian-archives");
        let mut names: Vec<_> = fs::read_dir(root.join("bookworm"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["bash_5_amd64.deb", "git_1_amd64.deb"]);
        assert_eq!(
            fs::read_dir(&root).unwrap().count(),
            1,
            "no temporary directories left"
        );
    }

    #[test]
    fn failed_install_keeps_the_old_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArchiveCache::open(dir.path(), "bookworm").unwrap();
        fs::write(cache.dir().join("git_1_amd64.deb"), b"").unwrap();
        fs::write(cache.fresh.path().join("half.deb"), b"").unwrap();
        drop(cache);
        let root = dir.path().join("debian-archives");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 1);
        assert!(root.join("bookworm/git_1_amd64.deb").exists());
    }

    #[test]
    fn of_two_builds_at_once_the_last_to_finish_fills_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let first = ArchiveCache::open(dir.path(), "bookworm").unwrap();
        let second = ArchiveCache::open(dir.path(), "bookworm").unwrap();
        fs::write(first.fresh.path().join("git_1_amd64.deb"), b"").unwrap();
        fs::write(second.fresh.path().join("git_2_amd64.deb"), b"").unwrap();
        assert_eq!(first.commit().unwrap(), 1);
        assert_eq!(second.commit().unwrap(), 1);
        let root = dir.path().join("debian-archives");
        assert!(root.join("bookworm/git_2_amd64.deb").exists());
        assert_eq!(fs::read_dir(&root).unwrap().count(), 1);
    }
}
