//! The SSH identity `vm ssh` uses: a key pair made on first use under the
//! state dir (or the one configured as `ssh_key`). Its public half goes into
//! each VM's config drive at every boot; nothing is baked into images.
//!
//! First use can be many creates at once, and a daemon can die mid-way, so
//! the pair is made like this:
//!
//! 1. take an exclusive `flock` on `ssh/.id_ed25519.lock` (waiting for it);
//! 2. if both halves exist by now, another caller made them: done;
//! 3. `ssh-keygen` into a temporary name in the same directory;
//! 4. rename the private half into place, then the public half.
//!
//! The public half is the completion mark: a caller that sees both files
//! uses them without the lock, and a private half alone (a crash between
//! the renames, or a torn pair from an older banger) is replaced.

use crate::error::Error;
use banger_sys::command::{Cmd, Runner};
use std::path::{Path, PathBuf};

const KEY_NAME: &str = "id_ed25519";

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
            let key = dir.join(KEY_NAME);
            if !complete(&key) {
                make_pair(runner, &dir, &key)?;
            }
            key
        }
    };
    let public = public_of(&key);
    let line = std::fs::read_to_string(&public).map_err(Error::io(format!(
        "cannot read the public key {} (ssh_key needs its .pub beside it)",
        public.display()
    )))?;
    Ok((key, line.trim().to_string()))
}

fn public_of(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", key.display()))
}

fn complete(key: &Path) -> bool {
    key.exists() && public_of(key).exists()
}

/// Steps 1-4 above.
fn make_pair(runner: &dyn Runner, dir: &Path, key: &Path) -> Result<(), Error> {
    let lock_path = dir.join(format!(".{KEY_NAME}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(Error::io(format!("cannot open {}", lock_path.display())))?;
    lock.lock()
        .map_err(Error::io(format!("cannot lock {}", lock_path.display())))?;
    if complete(key) {
        return Ok(());
    }
    remove_leftovers(dir);
    let tmp = dir.join(format!(".{KEY_NAME}.{:08x}.tmp", rand::random::<u32>()));
    let made = runner
        .run(
            &Cmd::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "banger", "-f"])
                .arg(&tmp),
        )
        .map_err(|source| Error::SshKey {
            path: key.to_owned(),
            source,
        })
        .and_then(|_| {
            std::fs::rename(&tmp, key).map_err(Error::io(format!(
                "cannot move the new key to {}",
                key.display()
            )))?;
            std::fs::rename(public_of(&tmp), public_of(key)).map_err(Error::io(format!(
                "cannot move the new public key to {}",
                public_of(key).display()
            )))
        });
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(public_of(&tmp));
    }
    made
}

/// Temporary pairs of runs that died between steps 3 and 4 (we hold the lock).
fn remove_leftovers(dir: &Path) {
    let prefix = format!(".{KEY_NAME}.");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && (name.ends_with(".tmp") || name.ends_with(".tmp.pub")) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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
    fn concurrent_first_uses_all_get_the_same_pair() {
        if banger_sys::command::which("ssh-keygen").is_none() {
            eprintln!("skipped: needs ssh-keygen (openssh-client)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let start = std::sync::Barrier::new(16);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        ensure_key(&banger_sys::command::SystemRunner, dir.path(), None)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let first = results[0].as_ref().unwrap();
        for r in &results {
            assert_eq!(r.as_ref().unwrap(), first, "every caller sees one pair");
        }
        let on_disk = std::fs::read_to_string(public_of(&first.0)).unwrap();
        assert_eq!(on_disk.trim(), first.1);
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".id_ed25519.lock", "id_ed25519", "id_ed25519.pub"]);
    }

    #[test]
    fn a_private_half_alone_is_replaced_by_a_whole_pair() {
        if banger_sys::command::which("ssh-keygen").is_none() {
            eprintln!("skipped: needs ssh-keygen (openssh-client)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join("ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        std::fs::write(ssh.join("id_ed25519"), "torn").unwrap();
        std::fs::write(ssh.join(".id_ed25519.0badf00d.tmp"), "crashed run").unwrap();
        let (key, line) = ensure_key(&banger_sys::command::SystemRunner, dir.path(), None).unwrap();
        assert!(line.starts_with("ssh-ed25519 "), "{line}");
        assert_ne!(std::fs::read_to_string(&key).unwrap(), "torn");
        assert!(!ssh.join(".id_ed25519.0badf00d.tmp").exists());
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
