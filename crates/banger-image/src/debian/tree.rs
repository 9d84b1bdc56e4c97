//! The installed Debian tree, made fit to be every VM's read-only base,
//! without mounting anything. Owns what is changed in the tree between the
//! installer and `mkfs.ext4`; not the installer ([`super::bootstrap`]) nor
//! the filesystem ([`crate::ext4`]).
//!
//! 1. [`unpack`] (unprivileged builds): `tar` unpacks mmdebstrap's tarball
//!    as the build's user, `/dev` left out (the agent mounts devtmpfs
//!    there), and the owners root does not have are read from the tarball
//!    ([`super::tarball`]) for the image.
//! 2. [`prepare`]: no ssh host keys (the agent makes each VM its own on
//!    first boot), an empty `machine-id`, a placeholder `hostname`, no copy
//!    of the host's `resolv.conf` (the agent writes the VM's), `/root` as
//!    the work disk's mount point, no apt lists or caches, an empty `/dev`.
//!    After debootstrap, which has no dpkg path filters, documentation and
//!    translations are deleted and the filters are installed for later
//!    `apt-get install`s. `/etc/os-release` stays Debian's.
//! 3. [`install_modules`] (after debootstrap; mmdebstrap does it in its
//!    hooks): the kernel's modules under `/lib/modules/<release>`, indexed
//!    by the tree's own `depmod` in a chroot, so `modprobe` works in the VM.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use banger_sys::command::{Cmd, Runner};

use super::DebianError;
use super::tarball;
use crate::packages::KernelPackage;

/// `etc/dpkg/dpkg.cfg.d/` file written after debootstrap: the filters
/// mmdebstrap's `--dpkgopt`s install.
const DPKG_EXCLUDES: &str = "\
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
";

/// Unpacks `tarball` into `tree` (which must not exist) and deletes it;
/// returns the owners root does not have, by path in the tree.
pub fn unpack(
    runner: &dyn Runner,
    tarball: &Path,
    tree: &Path,
) -> Result<BTreeMap<PathBuf, (u32, u32)>, DebianError> {
    fs::create_dir(tree).map_err(tree_err(tree))?;
    let tar = Cmd::new("tar")
        .args(["--extract", "--preserve-permissions", "--no-same-owner"])
        .arg("--exclude=./dev/*")
        .arg("--file")
        .arg(tarball)
        .arg("--directory")
        .arg(tree);
    runner.run(&tar).map_err(|source| DebianError::Unpack {
        tarball: tarball.to_path_buf(),
        source,
    })?;
    let owners = tarball::non_root_owners(tarball).map_err(|source| DebianError::ReadTarball {
        tarball: tarball.to_path_buf(),
        source,
    })?;
    fs::remove_file(tarball).map_err(tree_err(tarball))?;
    Ok(owners)
}

/// Step 2 of the module doc; `thin` deletes documentation and
/// translations (after debootstrap).
pub fn prepare(tree: &Path, thin: bool) -> Result<(), DebianError> {
    prepare_io(tree, thin).map_err(tree_err(tree))
}

fn prepare_io(tree: &Path, thin: bool) -> io::Result<()> {
    let etc = tree.join("etc");
    remove_entries(&etc.join("ssh"), |name| name.starts_with("ssh_host_"))?;
    let machine_id = etc.join("machine-id");
    if machine_id.exists() {
        fs::write(&machine_id, "")?;
    }
    fs::write(etc.join("hostname"), "localhost\n")?;
    let resolv = etc.join("resolv.conf");
    if resolv.symlink_metadata().is_ok() {
        fs::remove_file(&resolv)?;
    }
    fs::write(&resolv, "")?;
    // Whatever umask the daemon runs under (077), these are world-readable
    // in the guest, as Debian ships them.
    for f in [&machine_id, &etc.join("hostname"), &resolv] {
        if f.exists() {
            fs::set_permissions(f, fs::Permissions::from_mode(0o644))?;
        }
    }

    let root = tree.join("root");
    if !root.is_dir() {
        fs::create_dir(&root)?;
    }
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;

    let apt_lists = tree.join("var/lib/apt/lists");
    remove_entries(&apt_lists, |name| name != "partial" && name != "lock")?;
    remove_entries(&apt_lists.join("partial"), |_| true)?;
    remove_entries(&tree.join("var/cache/apt"), |name| name.ends_with(".bin"))?;
    remove_entries(&tree.join("var/cache/apt/archives"), |name| {
        name.ends_with(".deb")
    })?;
    remove_entries(&tree.join("dev"), |_| true)?;

    if thin {
        let share = tree.join("usr/share");
        for dir in ["doc", "man", "info"] {
            remove_entries(&share.join(dir), |_| true)?;
        }
        remove_entries(&share.join("locale"), |name| name != "locale.alias")?;
        let dpkg_cfg = etc.join("dpkg/dpkg.cfg.d");
        fs::create_dir_all(&dpkg_cfg)?;
        fs::write(dpkg_cfg.join("banger-excludes"), DPKG_EXCLUDES)?;
    }
    Ok(())
}

/// Deletes the entries of `dir` whose names `pick` chooses; a missing `dir`
/// has none.
fn remove_entries(dir: &Path, pick: impl Fn(&str) -> bool) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !pick(&entry.file_name().to_string_lossy()) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Copies the kernel's modules into the tree and indexes them with the
/// tree's `depmod` in a chroot (so as root only); returns the bytes copied.
pub fn install_modules(
    runner: &dyn Runner,
    tree: &Path,
    kernel: &KernelPackage,
) -> Result<u64, DebianError> {
    let from = kernel.package.dir.join("lib/modules").join(&kernel.release);
    // `lib` is a symlink to `usr/lib` in a merged-/usr tree: go through it.
    let to = tree.join("lib/modules").join(&kernel.release);
    let bytes = copy_tree(&from, &to).map_err(tree_err(&to))?;
    let depmod = Cmd::new("chroot")
        .arg(tree)
        .args(["depmod", &kernel.release]);
    runner
        .run(&depmod)
        .map_err(|source| DebianError::Depmod { source })?;
    Ok(bytes)
}

/// Copies the directory tree `from` to `to` (files, directories, symlinks,
/// permissions); returns the bytes of file data copied.
fn copy_tree(from: &Path, to: &Path) -> io::Result<u64> {
    fs::create_dir_all(to)?;
    // The source's mode, not one the daemon's umask (077) narrowed.
    fs::set_permissions(to, fs::symlink_metadata(from)?.permissions())?;
    let mut bytes = 0;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            bytes += copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
        } else {
            bytes += fs::copy(&src, &dst)?;
        }
    }
    Ok(bytes)
}

/// Removes a tree the build's user unpacked, giving directories that lack
/// it the owner's write permission first (a `0555` directory cannot be
/// emptied otherwise).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_up(path)?;
            fs::remove_dir_all(path)
        }
        other => other,
    }
}

fn open_up(dir: &Path) -> io::Result<()> {
    let mode = fs::symlink_metadata(dir)?.permissions().mode();
    fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            open_up(&entry.path())?;
        }
    }
    Ok(())
}

fn tree_err(path: &Path) -> impl Fn(io::Error) -> DebianError + '_ {
    move |source| DebianError::Tree {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::Package;
    use crate::testing::FakeRunner;

    /// A few files of an installed system, as mmdebstrap leaves them.
    fn fake_tree(root: &Path) {
        for dir in [
            "etc/ssh",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "dev/pts",
            "usr/share/doc/git",
            "usr/share/locale/de/LC_MESSAGES",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        for (file, text) in [
            ("etc/ssh/ssh_host_ed25519_key", "secret"),
            ("etc/ssh/ssh_host_ed25519_key.pub", "public"),
            (
                "etc/ssh/sshd_config",
                "Include /etc/ssh/sshd_config.d/*.conf\n",
            ),
            ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
            ("etc/hostname", "build-host\n"),
            ("etc/resolv.conf", "nameserver 10.255.255.53\n"),
            ("etc/os-release", "ID=debian\n"),
            ("var/lib/apt/lists/lock", ""),
            (
                "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
                "x",
            ),
            ("var/lib/apt/lists/partial/half", "x"),
            ("var/cache/apt/pkgcache.bin", "x"),
            ("var/cache/apt/srcpkgcache.bin", "x"),
            ("var/cache/apt/archives/git_1_amd64.deb", "x"),
            ("dev/null", ""),
            ("usr/share/doc/git/copyright", "x"),
            ("usr/share/locale/locale.alias", "x"),
            ("usr/share/locale/de/LC_MESSAGES/apt.mo", "x"),
        ] {
            fs::write(root.join(file), text).unwrap();
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn prepared_tree_has_no_host_keys_identity_or_apt_state() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_tree(root);
        prepare(root, false).unwrap();
        assert_eq!(names(&root.join("etc/ssh")), ["sshd_config"]);
        assert_eq!(fs::read(root.join("etc/machine-id")).unwrap(), b"");
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "localhost\n"
        );
        assert_eq!(fs::read(root.join("etc/resolv.conf")).unwrap(), b"");
        assert_eq!(
            fs::read_to_string(root.join("etc/os-release")).unwrap(),
            "ID=debian\n"
        );
        let root_dir = fs::metadata(root.join("root")).unwrap();
        assert!(root_dir.is_dir());
        assert_eq!(root_dir.permissions().mode() & 0o777, 0o700);
        assert_eq!(names(&root.join("var/lib/apt/lists")), ["lock", "partial"]);
        assert!(names(&root.join("var/lib/apt/lists/partial")).is_empty());
        assert_eq!(names(&root.join("var/cache/apt")), ["archives"]);
        assert_eq!(names(&root.join("var/cache/apt/archives")), ["partial"]);
        assert!(names(&root.join("dev")).is_empty());
        // mmdebstrap's dpkg filters did the thinning: nothing more goes.
        assert!(root.join("usr/share/doc/git/copyright").exists());
    }

    #[test]
    fn thinning_after_debootstrap_keeps_only_locale_alias() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_tree(root);
        prepare(root, true).unwrap();
        assert!(names(&root.join("usr/share/doc")).is_empty());
        assert_eq!(names(&root.join("usr/share/locale")), ["locale.alias"]);
        let excludes =
            fs::read_to_string(root.join("etc/dpkg/dpkg.cfg.d/banger-excludes")).unwrap();
        assert!(
            excludes.contains("path-exclude=/usr/share/man/*\n"),
            "{excludes}"
        );
    }

    #[test]
    fn prepare_tolerates_a_tree_without_optional_parts() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        prepare(dir.path(), false).unwrap();
        assert!(!dir.path().join("etc/machine-id").exists());
        assert!(dir.path().join("root").is_dir());
    }

    #[test]
    fn kernel_modules_land_under_lib_modules_through_the_usr_merge_link() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("pkg");
        let release = "6.1.0-56-cloud-amd64";
        let ko = pkg
            .join("lib/modules")
            .join(release)
            .join("kernel/fs/overlay");
        fs::create_dir_all(&ko).unwrap();
        fs::write(ko.join("overlay.ko"), vec![7u8; 1000]).unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("usr/lib")).unwrap();
        symlink("usr/lib", tree.join("lib")).unwrap();
        let kernel = KernelPackage {
            package: Package {
                name: format!("linux-image-{release}"),
                version: "6.1.192-2".into(),
                deb: PathBuf::new(),
                dir: pkg,
            },
            release: release.into(),
        };
        let runner = FakeRunner::new(|_| Ok(Default::default()));
        let bytes = install_modules(&runner, &tree, &kernel).unwrap();
        assert_eq!(bytes, 1000);
        assert!(
            tree.join("usr/lib/modules")
                .join(release)
                .join("kernel/fs/overlay/overlay.ko")
                .is_file()
        );
        assert_eq!(
            runner.calls(),
            [format!("chroot {} depmod {release}", tree.display())]
        );
    }

    #[test]
    fn read_only_directories_are_removed_too() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("ro/sub")).unwrap();
        fs::write(tree.join("ro/sub/file"), "x").unwrap();
        fs::set_permissions(tree.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
    }
}
