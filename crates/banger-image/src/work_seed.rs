//! The work seed: a small ext4 whose root directory is what the guest sees
//! at `/root`. Each VM's work disk starts as a copy of it, grown with
//! `resize2fs` to the configured size (done elsewhere), which is why VM
//! creation needs no mkfs. Owns the seed's contents; [`crate::ext4`] makes
//! sure the filesystem grows well.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use banger_sys::command::Runner;

use crate::ext4::{self, Ext4Error, Ext4Spec, Owners};

pub const SEED_SIZE: u64 = 32 << 20;
pub const LABEL: &str = "work";

const PROFILE: &str = "\
# ~/.profile on banger's work disk (mounted at /root).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PS1='\\u@\\h:\\w\\$ '
if [ -n \"$BASH_VERSION\" ] && [ -f ~/.bashrc ]; then . ~/.bashrc; fi
";

#[derive(Debug, thiserror::Error)]
pub enum WorkSeedError {
    #[error("could not assemble the work seed tree in {path}")]
    Tree {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
}

/// Builds `image`, using `scratch` (which must not exist) for the tree;
/// `extra` files (name, contents) go beside `.profile`.
pub fn build(
    runner: &dyn Runner,
    scratch: &Path,
    image: &Path,
    extra: &[(&str, &str)],
) -> Result<u64, WorkSeedError> {
    let tree_err = |source| WorkSeedError::Tree {
        path: scratch.to_path_buf(),
        source,
    };
    assemble_tree(scratch, extra).map_err(tree_err)?;
    ext4::make(
        runner,
        &Ext4Spec {
            tree: scratch,
            image,
            label: LABEL,
            size_bytes: SEED_SIZE,
            root_mode: Some(0o700),
            owners: Owners::Root,
        },
    )?;
    fs::remove_dir_all(scratch).map_err(tree_err)?;
    Ok(SEED_SIZE)
}

fn assemble_tree(root: &Path, extra: &[(&str, &str)]) -> io::Result<()> {
    fs::create_dir(root)?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
    fs::write(root.join(".profile"), PROFILE)?;
    for (name, contents) in extra {
        fs::write(root.join(name), contents)?;
    }
    let ssh = root.join(".ssh");
    fs::create_dir(&ssh)?;
    fs::set_permissions(ssh, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_tree_has_profile_and_private_ssh_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("seed");
        assemble_tree(&root, &[(".bashrc", "alias ll='ls -l'\n")]).unwrap();
        let profile = fs::read_to_string(root.join(".profile")).unwrap();
        assert!(profile.contains("PS1='\\u@\\h:\\w\\$ '"), "{profile}");
        assert!(profile.contains(". ~/.bashrc"), "{profile}");
        assert_eq!(
            fs::read_to_string(root.join(".bashrc")).unwrap(),
            "alias ll='ls -l'\n"
        );
        assert_eq!(
            fs::metadata(root.join(".ssh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }
}
