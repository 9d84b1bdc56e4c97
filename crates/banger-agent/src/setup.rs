//! System set-up after the switch of root (boot step 7): the runtime
//! filesystems a Linux system expects, the hostname, the host's ssh keys,
//! the host user's git identity (`git.rs`), then the network (`net.rs`).
//! Owns what the guest looks like to programs run in it; every failure is
//! logged and skipped. File edits take the root
//! directory as a parameter, so tests run them in temp dirs.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use banger_proto::GuestConfig;

use crate::boot::mount;
use crate::console::step;

/// Hostname when the config gives none.
pub const DEFAULT_HOSTNAME: &str = "banger";

/// Runs step 7 on the live system.
pub fn run(config: &GuestConfig) {
    runtime_mounts();
    let name = hostname_of(config);
    let _ = step(&format!("hostname {name}"), || -> io::Result<()> {
        rustix::system::sethostname(name.as_bytes())?;
        write_hostname_files(Path::new("/"), name)
    });
    if !config.authorized_keys.is_empty() {
        let _ = step("installed ssh keys", || {
            install_authorized_keys(Path::new("/root"), &config.authorized_keys, Owner::ROOT)
        });
    }
    if !config.git_identity.is_empty() {
        let _ = step("git identity", || {
            let (root, home) = (Path::new("/"), Path::new("/root"));
            crate::git::apply(root, home, &config.git_identity)
                .and_then(crate::git::Applied::finish)
                .map(|did| crate::console::log(format_args!("git identity: {did}")))
        });
    }
    crate::net::run(config.network.as_ref());
}

/// The hostname to use: the configured one, else the VM's name.
pub fn hostname_of(config: &GuestConfig) -> &str {
    [config.hostname.as_str(), config.vm_name.as_str()]
        .into_iter()
        .map(str::trim)
        .find(|n| !n.is_empty())
        .unwrap_or(DEFAULT_HOSTNAME)
}

fn runtime_mounts() {
    let mounts: [(&str, &str, &str, &str); 4] = [
        ("tmpfs", "/tmp", "tmpfs", "mode=1777"),
        ("tmpfs", "/run", "tmpfs", "mode=0755"),
        ("devpts", "/dev/pts", "devpts", "mode=0620,ptmxmode=0666"),
        ("tmpfs", "/dev/shm", "tmpfs", "mode=1777"),
    ];
    for (source, target, fstype, data) in mounts {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(target);
        let _ = step(&format!("mounted {target}"), || {
            mount(source, Path::new(target), fstype, data)
        });
    }
    // devtmpfs gives no /dev/ptmx on some kernels, and never the /proc links.
    let links = [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ];
    for (link, target) in links {
        if std::fs::symlink_metadata(link).is_err() {
            let _ = std::os::unix::fs::symlink(target, link);
        }
    }
}

/// Writes `etc/hostname` and makes `etc/hosts` map localhost and `name`;
/// a file that says so already is not written (a write is tens of
/// milliseconds in a TCG guest just restored, its ext4 code untranslated).
pub fn write_hostname_files(root: &Path, name: &str) -> io::Result<()> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    let update = |path: std::path::PathBuf, text: String| match std::fs::read_to_string(&path) {
        Ok(now) if now == text => Ok(()),
        Ok(now) => overwrite(&path, &text, now.len()),
        Err(_) => std::fs::write(&path, text),
    };
    update(etc.join("hostname"), format!("{name}\n"))?;
    let hosts = std::fs::read_to_string(etc.join("hosts")).unwrap_or_default();
    update(etc.join("hosts"), hosts_with(&hosts, name))
}

/// Writes `text` over the file at `path`, now `old_len` bytes long, in
/// place: a truncate first (what `fs::write` does) is ext4's block-freeing
/// and orphan-list path, ~10 ms of a fresh TCG guest's boot; cut only what
/// is left over past the new end.
pub(crate) fn overwrite(path: &Path, text: &str, old_len: usize) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(text.as_bytes())?;
    if old_len > text.len() {
        file.set_len(text.len() as u64)?;
    }
    Ok(())
}

/// `hosts` with `127.0.0.1 localhost` kept or added and the `127.0.1.1`
/// line naming `name`; other lines untouched.
pub fn hosts_with(hosts: &str, name: &str) -> String {
    let has_localhost = hosts.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some("127.0.0.1") && words.any(|w| w == "localhost")
    });
    let mut out = String::new();
    if !has_localhost {
        out.push_str("127.0.0.1\tlocalhost\n");
    }
    for line in hosts
        .lines()
        .filter(|l| l.split_whitespace().next() != Some("127.0.1.1"))
    {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!("127.0.1.1\t{name}\n"));
    out
}

/// Who owns a home directory and its ssh files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };

    /// Gives `path` to this owner unless it has it already.
    fn take(self, path: &Path) -> io::Result<()> {
        let meta = std::fs::metadata(path)?;
        if (meta.uid(), meta.gid()) != (self.uid, self.gid) {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))?;
        }
        Ok(())
    }
}

/// Adds `keys` missing from `home/.ssh/authorized_keys` (directory 0700,
/// file 0600), keeping the keys already there. sshd's `StrictModes` ignores
/// keys unless the file, its directory and `home` belong to the user (or
/// root) and no one else may write to them, so all three are given to
/// `owner` and `home` loses group and other write permission (the work
/// disk mounted on `/root` was made on the host, by whoever ran the daemon).
///
/// Missing keys are appended, and nothing is written when none is missing
/// and the modes are right: every restart of a VM finds its key there, and
/// rewriting the file (a truncate, ext4's block-freeing path) or even a
/// chmod to the same mode (an inode write) was the ext4 write path run
/// for the first time in that boot, ~15 ms of guest CPU under TCG. The
/// file's own bytes are never rewritten, whatever they are.
pub fn install_authorized_keys(home: &Path, keys: &[String], owner: Owner) -> io::Result<()> {
    owner.take(home)?;
    let mode = std::fs::metadata(home)?.mode();
    if mode & 0o022 != 0 {
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(mode & 0o7755))?;
    }
    let dir = home.join(".ssh");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    set_mode(&dir, 0o700)?;
    owner.take(&dir)?;
    let path = dir.join("authorized_keys");
    let existing = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let missing = missing_keys(&existing, keys);
    if !missing.is_empty() {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
        io::Write::write_all(&mut file, missing.as_bytes())?;
    }
    set_mode(&path, 0o600)?;
    owner.take(&path)
}

/// What to append to an `authorized_keys` holding `existing` for it to
/// hold every one of `keys` (once each): empty when it has them all.
fn missing_keys(existing: &[u8], keys: &[String]) -> String {
    let have = String::from_utf8_lossy(existing);
    let mut out = String::new();
    for key in keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
        let present = have.lines().chain(out.lines()).any(|l| l.trim() == key);
        if !present {
            out.push_str(key);
            out.push('\n');
        }
    }
    if !out.is_empty() && !existing.is_empty() && !existing.ends_with(b"\n") {
        out.insert(0, '\n');
    }
    out
}

/// Gives `path` the permission bits `mode` unless it has them: a chmod
/// writes the inode even when nothing changes.
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    if std::fs::metadata(path)?.mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_gains_localhost_and_the_hostname_once() {
        let before = "127.0.1.1\told-name\n::1\tlocalhost ip6-localhost\n";
        let after = hosts_with(before, "web");
        assert_eq!(
            after,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\tweb\n"
        );
        assert_eq!(hosts_with(&after, "web"), after);
    }

    #[test]
    fn hostname_files_are_written_under_the_given_root() {
        let root = tempfile::tempdir().unwrap();
        write_hostname_files(root.path(), "box").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/hostname")).unwrap(),
            "box\n"
        );
        let hosts = std::fs::read_to_string(root.path().join("etc/hosts")).unwrap();
        assert!(hosts.contains("127.0.1.1\tbox"));
    }

    #[test]
    fn hostname_files_already_right_are_not_rewritten() {
        let root = tempfile::tempdir().unwrap();
        write_hostname_files(root.path(), "box").unwrap();
        let hostname = root.path().join("etc/hostname");
        let before = std::fs::metadata(&hostname).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_hostname_files(root.path(), "box").unwrap();
        assert_eq!(
            std::fs::metadata(&hostname).unwrap().modified().unwrap(),
            before
        );
        write_hostname_files(root.path(), "other").unwrap();
        assert_eq!(std::fs::read_to_string(&hostname).unwrap(), "other\n");
    }

    #[test]
    fn a_shorter_name_written_in_place_leaves_nothing_of_the_longer() {
        let root = tempfile::tempdir().unwrap();
        write_hostname_files(root.path(), "a-much-longer-name").unwrap();
        write_hostname_files(root.path(), "b").unwrap();
        let read = |f: &str| std::fs::read_to_string(root.path().join(f)).unwrap();
        assert_eq!(read("etc/hostname"), "b\n");
        assert_eq!(read("etc/hosts"), "127.0.0.1\tlocalhost\n127.0.1.1\tb\n");
    }

    #[test]
    fn hostname_falls_back_to_the_vm_name() {
        let cfg = GuestConfig {
            vm_name: "dev".into(),
            ..Default::default()
        };
        assert_eq!(hostname_of(&cfg), "dev");
        assert_eq!(hostname_of(&GuestConfig::default()), DEFAULT_HOSTNAME);
    }

    #[test]
    fn authorized_keys_are_merged_with_private_permissions() {
        let home = tempfile::tempdir().unwrap();
        let keys = vec!["ssh-ed25519 AAAA host".to_string()];
        install_authorized_keys(home.path(), &["ssh-rsa BBBB mine".to_string()], me()).unwrap();
        install_authorized_keys(home.path(), &keys, me()).unwrap();
        install_authorized_keys(home.path(), &keys, me()).unwrap();
        let path = home.path().join(".ssh/authorized_keys");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "ssh-rsa BBBB mine\nssh-ed25519 AAAA host\n"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(home.path().join(".ssh")).unwrap().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn authorized_keys_already_there_are_not_written_again() {
        let home = tempfile::tempdir().unwrap();
        let keys = vec!["ssh-ed25519 AAAA host".to_string()];
        install_authorized_keys(home.path(), &keys, me()).unwrap();
        let stamps = |p: &str| {
            let m = std::fs::metadata(home.path().join(p)).unwrap();
            (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
        };
        let before = [stamps(".ssh"), stamps(".ssh/authorized_keys")];
        // The kernel's file times move in clock ticks: let one pass.
        std::thread::sleep(std::time::Duration::from_millis(20));
        install_authorized_keys(home.path(), &keys, me()).unwrap();
        assert_eq!(
            [stamps(".ssh"), stamps(".ssh/authorized_keys")],
            before,
            "neither the file nor its directory was touched"
        );
    }

    #[test]
    fn a_missing_key_is_appended_after_the_bytes_already_there() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".ssh")).unwrap();
        let path = home.path().join(".ssh/authorized_keys");
        // Not UTF-8, and no newline at its end: kept byte for byte.
        std::fs::write(&path, b"ssh-rsa \xff\xfe mine").unwrap();
        let keys = vec![
            "ssh-ed25519 AAAA host".into(),
            "ssh-ed25519 AAAA host".into(),
        ];
        install_authorized_keys(home.path(), &keys, me()).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"ssh-rsa \xff\xfe mine\nssh-ed25519 AAAA host\n"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn authorized_keys_and_home_are_given_to_the_owner() {
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        // As root the files can be given away; otherwise to ourselves.
        let owner = match rustix::process::geteuid().is_root() {
            true => Owner {
                uid: 1234,
                gid: 1234,
            },
            false => me(),
        };
        install_authorized_keys(home.path(), &["ssh-ed25519 AAAA host".to_string()], owner)
            .unwrap();
        assert_eq!(
            std::fs::metadata(home.path()).unwrap().mode() & 0o777,
            0o755
        );
        for path in ["", ".ssh", ".ssh/authorized_keys"] {
            let meta = std::fs::metadata(home.path().join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (owner.uid, owner.gid), "{path}");
        }
    }

    fn me() -> Owner {
        Owner {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }
}
