//! All-or-nothing image directories: an image is built in
//! `<out_dir>.tmp-XXXXXX` beside its final place and renamed into place
//! only when complete. Dropping an uncommitted [`Staging`] (an error, a
//! panic) removes the temporary directory, so a failed build leaves
//! nothing behind and a directory named like an image is always whole.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error(
        "image directory {path} already exists: delete that image first or choose another name"
    )]
    Exists { path: PathBuf },
    #[error(
        "{path} cannot be an image directory: it must be an absolute path with a parent directory"
    )]
    BadPath { path: PathBuf },
    #[error(
        "could not create a staging directory beside {path}: check that its parent is writable"
    )]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not move the finished image into {path}")]
    Commit {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A temporary directory that becomes `out_dir` on [`Staging::commit`].
#[derive(Debug)]
pub struct Staging {
    dir: TempDir,
    out_dir: PathBuf,
}

impl Staging {
    /// Creates the staging directory beside `out_dir`, which must not exist
    /// (its parent is created if needed).
    pub fn beside(out_dir: &Path) -> Result<Staging, StagingError> {
        let bad_path = || StagingError::BadPath {
            path: out_dir.to_path_buf(),
        };
        if !out_dir.is_absolute() {
            return Err(bad_path());
        }
        let parent = out_dir.parent().ok_or_else(bad_path)?;
        let file_name = out_dir
            .file_name()
            .ok_or_else(bad_path)?
            .to_string_lossy()
            .into_owned();
        if out_dir.symlink_metadata().is_ok() {
            return Err(StagingError::Exists {
                path: out_dir.to_path_buf(),
            });
        }
        let create_err = |source| StagingError::Create {
            path: out_dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(parent).map_err(create_err)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{file_name}.tmp-"))
            .tempdir_in(parent)
            .map_err(create_err)?;
        Ok(Staging {
            dir,
            out_dir: out_dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Renames the staging directory to its final name.
    pub fn commit(self) -> Result<PathBuf, StagingError> {
        // rename(2) would silently replace an empty directory made meanwhile.
        if self.out_dir.symlink_metadata().is_ok() {
            return Err(StagingError::Exists { path: self.out_dir });
        }
        fs::rename(self.dir.path(), &self.out_dir).map_err(|source| StagingError::Commit {
            path: self.out_dir.clone(),
            source,
        })?;
        // The directory lives on under its final name.
        let _ = self.dir.keep();
        Ok(self.out_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_staging_becomes_the_image_directory() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("images/minimal");
        let staging = Staging::beside(&out).unwrap();
        assert!(
            staging
                .path()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("minimal.tmp-")
        );
        fs::write(staging.path().join("vmlinux"), b"k").unwrap();
        staging.commit().unwrap();
        assert_eq!(fs::read(out.join("vmlinux")).unwrap(), b"k");
        assert_eq!(fs::read_dir(root.path().join("images")).unwrap().count(), 1);
    }

    #[test]
    fn dropped_staging_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let staging = Staging::beside(&root.path().join("minimal")).unwrap();
        fs::write(staging.path().join("rootfs.ext4"), b"partial").unwrap();
        drop(staging);
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn existing_image_directory_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let err = Staging::beside(root.path()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("already exists: delete that image first or choose another name"),
            "{err}"
        );
    }
}
