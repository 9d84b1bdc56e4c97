//! The `minimal` preset's root filesystem: busybox-static and a handful of
//! `/etc` files, made into `rootfs.ext4` with [`crate::ext4`]. Owns the
//! contents of that tree; not the kernel, the initramfs or the work disk.
//!
//! 1. Lay out the FHS skeleton in a scratch directory inside the staging
//!    directory (so a failed build leaves nothing behind).
//! 2. Copy `/bin/busybox` out of the unpacked package and ask it for its
//!    applets (`busybox --list-full`; the binary is static, so it runs on
//!    the host); link each applet's path to `/bin/busybox`.
//! 3. Write `passwd`, `group`, `shadow` (root's password locked: logins are
//!    by ssh key or through the agent), `hosts`, `os-release`, `profile`.
//! 4. `mkfs.ext4 -d` the tree into an image sized to the tree plus
//!    [`FREE_SPACE`], then delete the tree.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use banger_sys::command::{Cmd, CommandError, Runner};

use crate::ext4::{self, Ext4Error, Ext4Spec, Owners};

/// Bumped whenever the preset's contents change (`VERSION_ID` in os-release).
pub const MINIMAL_VERSION: u32 = 1;
/// Room left free in the base filesystem: the guest writes there through
/// its copy-on-write overlay, which cannot grow the filesystem itself.
pub const FREE_SPACE: u64 = 48 << 20;
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("could not assemble the root filesystem tree in {path}")]
    Tree {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is missing from the unpacked busybox-static package: delete {cache} and build again"
    )]
    BusyboxMissing { path: PathBuf, cache: PathBuf },
    #[error("could not list busybox's applets")]
    Applets {
        #[source]
        source: CommandError,
    },
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
}

/// The finished `rootfs.ext4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    pub size_bytes: u64,
    pub applets: usize,
}

/// Builds `image` from busybox unpacked at `busybox_dir` (package version
/// `busybox_version`), using `scratch` for the tree.
pub fn build_minimal(
    runner: &dyn Runner,
    busybox_dir: &Path,
    busybox_version: &str,
    scratch: &Path,
    image: &Path,
) -> Result<Rootfs, RootfsError> {
    let applets = assemble_tree(runner, busybox_dir, busybox_version, scratch)?;
    let tree_err = |source| RootfsError::Tree {
        path: scratch.to_path_buf(),
        source,
    };
    let size_bytes =
        (ext4::tree_size(scratch).map_err(tree_err)? + FREE_SPACE).next_multiple_of(1 << 20);
    ext4::make(
        runner,
        &Ext4Spec {
            tree: scratch,
            image,
            label: "rootfs",
            size_bytes,
            root_mode: None,
            owners: Owners::Root,
        },
    )?;
    fs::remove_dir_all(scratch).map_err(tree_err)?;
    Ok(Rootfs {
        size_bytes,
        applets,
    })
}

/// Lays out the tree in `root`; returns the number of applet links.
fn assemble_tree(
    runner: &dyn Runner,
    busybox_dir: &Path,
    busybox_version: &str,
    root: &Path,
) -> Result<usize, RootfsError> {
    let tree_err = |source| RootfsError::Tree {
        path: root.to_path_buf(),
        source,
    };
    let dirs: &[(&str, u32)] = &[
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("var", 0o755),
        ("var/tmp", 0o1777),
    ];
    for (dir, mode) in dirs {
        make_dir(&root.join(dir), *mode).map_err(tree_err)?;
    }

    let source = busybox_dir.join("bin/busybox");
    if !source.is_file() {
        return Err(RootfsError::BusyboxMissing {
            path: source,
            cache: busybox_dir.to_path_buf(),
        });
    }
    let busybox = root.join("bin/busybox");
    fs::copy(&source, &busybox).map_err(tree_err)?;
    fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755)).map_err(tree_err)?;

    let listing = runner
        .run(&Cmd::new(busybox.to_string_lossy()).arg("--list-full"))
        .map_err(|source| RootfsError::Applets { source })?;
    let mut links = 0;
    for rel in applet_paths(&listing.stdout_lossy()) {
        let link = root.join(rel);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(tree_err)?;
        }
        symlink("/bin/busybox", &link).map_err(tree_err)?;
        links += 1;
    }

    for (path, mode, contents) in etc_files(busybox_version) {
        let path = root.join(path);
        fs::write(&path, contents).map_err(tree_err)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(tree_err)?;
    }
    Ok(links)
}

fn make_dir(path: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// The relative paths in `busybox --list-full` output worth linking: not
/// busybox itself, nothing at the top level (`linuxrc`), nothing escaping.
fn applet_paths(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| l.contains('/') && *l != "bin/busybox")
        .filter(|l| {
            Path::new(l)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        })
        .collect()
}

/// `1:1.35.0-4+deb12u1+b1` → `1.35.0`.
fn upstream_version(package_version: &str) -> &str {
    let no_epoch = package_version
        .split_once(':')
        .map_or(package_version, |(_, v)| v);
    no_epoch.rsplit_once('-').map_or(no_epoch, |(v, _)| v)
}

fn etc_files(busybox_version: &str) -> Vec<(&'static str, u32, String)> {
    let upstream = upstream_version(busybox_version);
    vec![
        (
            "etc/passwd",
            0o644,
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .into(),
        ),
        ("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n".into()),
        (
            "etc/shadow",
            0o640,
            "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n".into(),
        ),
        (
            "etc/hosts",
            0o644,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".into(),
        ),
        (
            "etc/os-release",
            0o644,
            format!(
                "NAME=\"banger minimal\"\nID=banger-minimal\nVERSION_ID={MINIMAL_VERSION}\n\
                 PRETTY_NAME=\"banger minimal {MINIMAL_VERSION} (busybox {upstream})\"\n"
            ),
        ),
        (
            "etc/profile",
            0o644,
            format!("export PATH={PATH}\numask 022\n"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeRunner, stdout};

    const LISTING: &str =
        "bin/busybox\nusr/bin/[\nbin/sh\nsbin/init\nlinuxrc\nusr/sbin/chroot\n../escape\nbin/sh\n";

    fn fake_busybox(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("bin/busybox"), b"\x7fELF busybox").unwrap();
    }

    #[test]
    fn tree_links_applets_to_busybox_and_writes_etc() {
        let pkg = tempfile::tempdir().unwrap();
        fake_busybox(pkg.path());
        let root = tempfile::tempdir().unwrap();
        let runner = FakeRunner::new(|_| Ok(stdout(LISTING)));
        let links =
            assemble_tree(&runner, pkg.path(), "1:1.35.0-4+deb12u1+b1", root.path()).unwrap();
        assert_eq!(links, 4);
        assert_eq!(
            fs::read_link(root.path().join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert_eq!(
            fs::read_link(root.path().join("usr/bin/[")).unwrap(),
            Path::new("/bin/busybox")
        );
        assert!(!root.path().join("linuxrc").exists());
        assert_eq!(
            fs::metadata(root.path().join("bin/busybox"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(
            fs::metadata(root.path().join("tmp"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o1777
        );
        let passwd = fs::read_to_string(root.path().join("etc/passwd")).unwrap();
        assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/sh\n"));
        let os_release = fs::read_to_string(root.path().join("etc/os-release")).unwrap();
        assert!(
            os_release.contains("ID=banger-minimal\nVERSION_ID=1\n"),
            "{os_release}"
        );
        assert!(
            os_release.contains("PRETTY_NAME=\"banger minimal 1 (busybox 1.35.0)\""),
            "{os_release}"
        );
        assert!(runner.calls()[0].ends_with("bin/busybox --list-full"));
    }

    #[test]
    fn missing_busybox_says_to_clear_the_cache() {
        let pkg = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let runner = FakeRunner::new(|_| Ok(stdout(LISTING)));
        let err = assemble_tree(&runner, pkg.path(), "1.0-1", root.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("is missing from the unpacked busybox-static package: delete"),
            "{err}"
        );
    }

    #[test]
    fn upstream_version_drops_epoch_and_debian_revision() {
        assert_eq!(upstream_version("1:1.35.0-4+deb12u1+b1"), "1.35.0");
        assert_eq!(upstream_version("1.36.1"), "1.36.1");
    }
}
