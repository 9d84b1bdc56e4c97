//! End-to-end as a plain user, the way a developer without sudo meets
//! banger: an account made by `adduser` with its defaults (a 0700 home),
//! whose state directory is 0700 too; the debian image built rootless on
//! first use (mmdebstrap's unshare mode, whose namespace root cannot enter
//! either), user-mode networking chosen by default, ssh into the guest with
//! its exit code, a port published on 127.0.0.1, and nothing of the user's
//! left running or lying in the temporary directories afterwards. Needs
//! root only to make the account (see [`banger_e2e::unprivileged_user`]);
//! every banger command runs as it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use banger_e2e::{Env, boot_permit, skip_unless_root_with, unprivileged_user, wait_until};

/// Processes the account owns, with their command lines.
fn processes_of(uid: u32) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-o", "pid=,stat=,args=", "-u", &uid.to_string()])
        .output()
        .expect("run ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|s| !s.starts_with('Z'))
        })
        .map(str::to_string)
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The chroot directories of rootless builds (banger-image's
/// `debian::scratch`) that `uid` owns in the temporary directories.
fn chroot_dirs_of(uid: u32) -> Vec<PathBuf> {
    let tmpdir = std::env::var_os("TMPDIR").map(PathBuf::from);
    ["/var/tmp", "/tmp"]
        .map(PathBuf::from)
        .into_iter()
        .chain(tmpdir)
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("banger-debian-")
        })
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .map(|e| e.path())
        .collect()
}

#[test]
fn a_user_without_privileges_builds_the_image_boots_and_sshes_in() {
    if skip_unless_root_with(
        "accounts made with adduser",
        &["mmdebstrap", "newuidmap", "ssh", "adduser"],
    ) {
        return;
    }
    let user = unprivileged_user();
    let home = user.home().expect("the account has a home");
    assert_eq!(mode(&home), 0o700, "adduser's default home mode");
    // No network setting: without privileges the default is user mode.
    let env = Env::as_user("default_memory_mib = 512\n", user);
    assert_eq!(mode(env.root.path()), 0o700);
    // A state directory only its owner enters, whoever made it.
    let state = env.state_dir();
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(user.uid), Some(user.gid)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let chroots_before = chroot_dirs_of(user.uid);
    assert!(
        processes_of(user.uid).is_empty(),
        "the account runs nothing before the test: {:?}",
        processes_of(user.uid)
    );

    // doctor tells how an image build would run for this user.
    let doctor = env.json(&["doctor", "--json"]);
    let build = doctor["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == "debian-build"))
        .unwrap_or_else(|| panic!("doctor has a debian-build line: {doctor}"));
    assert_eq!(build["status"], "pass", "{build}");
    assert!(
        build["detail"]
            .as_str()
            .is_some_and(|d| d.contains("--mode=unshare")),
        "{build}"
    );

    let _permit = boot_permit();
    let port = banger_e2e::free_port();
    let out = env.run(&[
        "vm",
        "create",
        "--name",
        "a",
        "--publish",
        &format!("{port}:8000"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("install Debian with mmdebstrap ... ok"),
        "the first create builds the debian image, rootless, with progress: {stderr}"
    );
    let vm = env.json(&["vm", "show", "a", "--json"]);
    assert_eq!(vm["network"], "user", "{vm}");
    // The image is the user's, in its still-private state directory, and
    // the build left no chroot directory behind.
    let rootfs = env.state_dir().join("images/debian/rootfs.ext4");
    let meta = std::fs::metadata(&rootfs).unwrap_or_else(|e| panic!("{rootfs:?}: {e}"));
    assert_eq!((meta.uid(), meta.gid()), (user.uid, user.gid));
    assert_eq!(mode(&env.state_dir()), 0o700);
    assert_eq!(chroot_dirs_of(user.uid), chroots_before, "chroot dirs left");

    env.assert_ssh_works("a");
    // A restart finds the host's key in the work disk's authorized_keys
    // (made on the host, by this user) and adds it no second time; sshd
    // still takes it.
    let keys = || env.ok(&["vm", "exec", "a", "--", "cat", "/root/.ssh/authorized_keys"]);
    let before = keys();
    assert_eq!(before.lines().count(), 1, "{before}");
    env.ok(&["vm", "stop", "a"]);
    env.ok(&["vm", "start", "a"]);
    assert_eq!(keys(), before);
    env.assert_ssh_works("a");
    // The guest's root user is root inside the guest, whoever runs banger.
    assert_eq!(env.ok(&["vm", "exec", "a", "--", "id", "-u"]), "0\n");

    env.assert_published("a", 8000, port, "rootless");

    env.ok(&["vm", "delete", "a"]);
    assert!(
        env.http_get(port).is_none(),
        "the published port went with the vm"
    );
    let left = processes_of(user.uid);
    assert!(
        left.iter().all(|p| p.contains("bangerd")),
        "only the daemon is left: {left:?}"
    );
    env.ok(&["daemon", "stop"]);
    assert!(
        wait_until(Duration::from_secs(5), || processes_of(user.uid).is_empty()),
        "the account runs nothing after daemon stop: {:?}",
        processes_of(user.uid)
    );
    let vms = env.state_dir().join("vms");
    let leftovers = banger_e2e::files_under(&vms);
    assert!(leftovers.is_empty(), "vm files left: {leftovers:?}");
}
