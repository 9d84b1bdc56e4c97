//! The SSH identity `vm ssh` uses: a key pair made on first use under the
//! state dir (or the one configured as `ssh_key`). Its public half goes into
//! each VM's config drive at every boot; nothing is baked into images.

use crate::error::Error;
use banger_sys::command::{Cmd, Runner};
use std::path::{Path, PathBuf};

/// The private key path and the public key line, creating the pair if needed.
pub fn ensure_key(
    runner: &dyn Runner,
    state_dir: &Path,
    configured: Option<&Path>,
) -> Result<(PathBuf, String), Error> {
    let key = match configured {
        Some(k) => k.to_owned(),
        None => {
            let dir = state_dir.join("ssh");
            std::fs::create_dir_all(&dir)
                .map_err(Error::io(format!("cannot create {}", dir.display())))?;
            let key = dir.join("id_ed25519");
            if !key.exists() {
                runner
                    .run(
                        &Cmd::new("ssh-keygen")
                            .args(["-q", "-t", "ed25519", "-N", "", "-C", "banger", "-f"])
                            .arg(&key),
                    )
                    .map_err(|source| Error::SshKey {
                        path: key.clone(),
                        source,
                    })?;
            }
            key
        }
    };
    let public = PathBuf::from(format!("{}.pub", key.display()));
    let line = std::fs::read_to_string(&public).map_err(Error::io(format!(
        "cannot read the public key {} (ssh_key needs its .pub beside it)",
        public.display()
    )))?;
    Ok((key, line.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_pair_is_made_once_and_reused() {
        if banger_sys::command::which("ssh-keygen").is_none() {
            eprintln!("skipped: needs ssh-keygen (openssh-client)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (k1, pub1) = ensure_key(&banger_sys::command::SystemRunner, dir.path(), None).unwrap();
        let (k2, pub2) = ensure_key(&banger_sys::command::SystemRunner, dir.path(), None).unwrap();
        assert_eq!((k1, &pub1), (k2, &pub2));
        assert!(pub1.starts_with("ssh-ed25519 "));
    }

    #[test]
    fn a_configured_key_without_its_public_half_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("mykey");
        std::fs::write(&key, "x").unwrap();
        let err = ensure_key(&banger_sys::command::SystemRunner, dir.path(), Some(&key))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mykey.pub"), "{err}");
    }
}
