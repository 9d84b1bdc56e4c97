//! Unit tests of `sshd.rs` in temp-dir roots: config analysis, the files
//! it writes, key generation with the real `ssh-keygen` when the host has
//! one, and supervision of a stand-in sshd that keeps exiting.

use std::os::unix::fs::MetadataExt;

use super::*;

const DEBIAN_CONFIG: &str = "\
# This is the sshd server system-wide configuration file.
Include /etc/ssh/sshd_config.d/*.conf

#PermitRootLogin prohibit-password
KbdInteractiveAuthentication no
UsePAM yes
Subsystem\tsftp\t/usr/lib/openssh/sftp-server
";

fn root_with_config(config: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc/ssh")).unwrap();
    std::fs::write(root.path().join("etc/ssh/sshd_config"), config).unwrap();
    root
}

fn script(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn sshd_in(root: &Path) -> Sshd {
    Sshd {
        root: root.to_path_buf(),
        program: root.join("usr/sbin/sshd"),
        keygen: "/usr/bin/ssh-keygen".into(),
        backoff: Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(40),
            stable: Duration::from_secs(60),
        },
        given: None,
    }
}

#[test]
fn debians_config_leaves_root_login_to_a_drop_in() {
    assert_eq!(root_login(DEBIAN_CONFIG), RootLogin::DropIn);
}

#[test]
fn a_config_that_allows_root_keys_is_left_alone() {
    assert_eq!(root_login("PermitRootLogin yes\n"), RootLogin::Allowed);
    assert_eq!(
        root_login("  permitrootlogin=without-password\n"),
        RootLogin::Allowed
    );
    assert_eq!(
        root_login("Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin prohibit-password\n"),
        RootLogin::Allowed
    );
}

#[test]
fn a_refusal_the_drop_in_cannot_override_needs_options() {
    assert_eq!(
        root_login("PermitRootLogin no\nInclude /etc/ssh/sshd_config.d/*.conf\n"),
        RootLogin::Options
    );
    assert_eq!(root_login(""), RootLogin::Options);
    assert_eq!(
        root_login("Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin no\n"),
        RootLogin::DropIn
    );
}

#[test]
fn settings_inside_a_match_block_are_not_global() {
    let config = "Include sshd_config.d/*.conf\nMatch User git\n  PermitRootLogin yes\n";
    assert_eq!(root_login(config), RootLogin::DropIn);
}

#[test]
fn the_drop_in_is_written_when_the_config_does_not_allow_root() {
    let root = root_with_config(DEBIAN_CONFIG);
    let args = permit_root_login(root.path()).unwrap();
    assert!(args.is_empty());
    let drop_in = std::fs::read_to_string(root.path().join(DROP_IN)).unwrap();
    assert!(drop_in.contains("\nPermitRootLogin prohibit-password\n"));
    assert!(drop_in.contains("\nPasswordAuthentication no\n"));
}

#[test]
fn nothing_is_written_when_the_config_allows_root() {
    let root = root_with_config("PermitRootLogin yes\n");
    assert!(permit_root_login(root.path()).unwrap().is_empty());
    assert!(!root.path().join(DROP_IN).exists());
}

#[test]
fn a_config_without_drop_ins_gets_command_line_options() {
    let root = root_with_config("PermitRootLogin no\n");
    assert_eq!(
        permit_root_login(root.path()).unwrap(),
        [
            "-o",
            "PermitRootLogin=prohibit-password",
            "-o",
            "PasswordAuthentication=no"
        ]
    );
}

#[test]
fn the_run_dir_is_made_world_readable() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("run/sshd")).unwrap();
    std::fs::set_permissions(
        root.path().join("run/sshd"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    make_run_dir(root.path()).unwrap();
    let mode = std::fs::metadata(root.path().join("run/sshd"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
}

#[test]
fn backoff_doubles_to_its_cap_and_starts_over_after_a_healthy_run() {
    let b = Backoff::default();
    let quick = Duration::from_millis(50);
    let mut waits = Vec::new();
    let mut wait = None;
    for _ in 0..8 {
        let next = b.next(wait, quick);
        waits.push(next.as_secs());
        wait = Some(next);
    }
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(b.next(wait, Duration::from_secs(120)), b.min);
}

#[tokio::test]
async fn missing_host_keys_are_generated_private() {
    if !Path::new("/usr/bin/ssh-keygen").is_file() {
        banger_sys::skip_test("missing_host_keys_are_generated_private needs /usr/bin/ssh-keygen");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let sshd = sshd_in(root.path());
    assert!(missing_host_keys(root.path()));
    sshd.generate_host_keys(Reaper::global()).await.unwrap();
    assert!(!missing_host_keys(root.path()));
    let key = root.path().join("etc/ssh/ssh_host_ed25519_key");
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o077, 0);
}

#[tokio::test]
async fn a_failing_keygen_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let mut sshd = sshd_in(root.path());
    sshd.keygen = root.path().join("keygen");
    script(&sshd.keygen, "exit 3");
    let err = sshd.generate_host_keys(Reaper::global()).await.unwrap_err();
    assert!(matches!(err, SshdError::Failed { code: 3, .. }));
}

#[tokio::test]
async fn a_first_boot_takes_the_hosts_key_and_runs_no_keygen() {
    let root = tempfile::tempdir().unwrap();
    let mut sshd = sshd_in(root.path());
    sshd.keygen = root.path().join("keygen");
    script(&sshd.keygen, "exit 3");
    let key = SshHostKey {
        private: "-----BEGIN OPENSSH PRIVATE KEY-----\nfrom the host\n".into(),
        public: "ssh-ed25519 HOST".into(),
    };
    sshd.given = Some(key.clone());
    let made_by = sshd.generate_host_keys(Reaper::global()).await.unwrap();
    assert_eq!(made_by, "the host");
    let private = root.path().join("etc/ssh/ssh_host_ed25519_key");
    assert_eq!(std::fs::read_to_string(&private).unwrap(), key.private);
    assert_eq!(std::fs::metadata(&private).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/ssh/ssh_host_ed25519_key.pub")).unwrap(),
        "ssh-ed25519 HOST\n"
    );
    assert!(!missing_host_keys(root.path()));
}

#[tokio::test]
async fn a_host_key_that_is_no_ed25519_pair_is_made_anew() {
    let root = tempfile::tempdir().unwrap();
    let mut sshd = sshd_in(root.path());
    sshd.keygen = root.path().join("keygen");
    script(&sshd.keygen, MAKE_KEY);
    sshd.given = Some(SshHostKey {
        private: "not a key".into(),
        public: "ssh-rsa AAAA".into(),
    });
    let made_by = sshd.generate_host_keys(Reaper::global()).await.unwrap();
    assert_eq!(made_by, "ssh-keygen");
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/ssh/ssh_host_ed25519_key")).unwrap(),
        "generated\n"
    );
}

/// What a stand-in keygen does to leave a key pair at its `-f` path
/// (the last argument).
const MAKE_KEY: &str =
    r#"for a; do k="$a"; done; echo generated > "$k"; echo ssh-ed25519 GEN > "$k.pub""#;

#[tokio::test]
async fn a_key_the_host_gave_while_the_first_key_was_made_stays() {
    let root = tempfile::tempdir().unwrap();
    let mut sshd = sshd_in(root.path());
    std::fs::create_dir_all(root.path().join("usr/sbin")).unwrap();
    std::fs::write(&sshd.program, "").unwrap();
    sshd.keygen = root.path().join("keygen");
    script(&sshd.keygen, &format!("sleep 0.4; {MAKE_KEY}"));
    let key = SshHostKey {
        private: "-----BEGIN OPENSSH PRIVATE KEY-----\nhost\n".into(),
        public: "ssh-ed25519 HOST".into(),
    };
    let (made, ()) = tokio::join!(sshd.generate_host_keys(Reaper::global()), async {
        // A warm guest restored mid-keygen is given its own key.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(sshd.install_host_key(&key).unwrap());
    });
    made.unwrap();
    let etc = root.path().join("etc/ssh");
    assert_eq!(
        std::fs::read_to_string(etc.join("ssh_host_ed25519_key")).unwrap(),
        key.private
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("ssh_host_ed25519_key.pub")).unwrap(),
        "ssh-ed25519 HOST\n"
    );
    let left: Vec<_> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "nothing but the host's pair: {left:?}");
}

#[tokio::test]
async fn host_keys_are_made_at_idle_priority() {
    let root = tempfile::tempdir().unwrap();
    let mut sshd = sshd_in(root.path());
    sshd.keygen = root.path().join("keygen");
    let seen = root.path().join("policy");
    // Field 41 of stat is the scheduling policy: 5 is SCHED_IDLE.
    script(
        &sshd.keygen,
        &format!(
            "cut -d' ' -f41 /proc/$$/stat > {}; {MAKE_KEY}",
            seen.display()
        ),
    );
    sshd.generate_host_keys(Reaper::global()).await.unwrap();
    let policy = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(policy.trim(), "5", "SCHED_IDLE");
    // The spawning thread was its own: this one runs as before.
    let mine = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_comm = mine.rsplit(')').next().unwrap();
    assert_eq!(
        after_comm.split_whitespace().nth(38),
        Some("0"),
        "SCHED_OTHER"
    );
}

#[tokio::test]
async fn an_exiting_sshd_is_restarted_with_its_arguments() {
    let root = tempfile::tempdir().unwrap();
    let sshd = sshd_in(root.path());
    let runs = root.path().join("runs");
    script(
        &sshd.program,
        &format!("echo \"$*\" >> {}\nexit 1", runs.display()),
    );
    let args = vec!["-o".to_string(), "X=y".to_string()];
    let supervise = sshd.supervise(Reaper::global(), &args);
    // 10, 20, 40, 40 ms of back-off: at least four runs in well under a second.
    let _ = tokio::time::timeout(Duration::from_millis(800), supervise).await;
    let runs = std::fs::read_to_string(&runs).unwrap();
    assert!(runs.lines().count() >= 4, "only {runs:?}");
    assert!(runs.lines().all(|l| l == "-D -e -o X=y"));
}

#[tokio::test]
async fn an_image_without_sshd_starts_nothing() {
    let root = tempfile::tempdir().unwrap();
    let sshd = sshd_in(root.path());
    tokio::time::timeout(Duration::from_secs(1), sshd.run(Reaper::global()))
        .await
        .unwrap();
    assert!(!root.path().join("run/sshd").exists());
}

#[tokio::test]
async fn a_first_boot_prepares_keys_run_dir_and_config() {
    if !Path::new("/usr/bin/ssh-keygen").is_file() {
        banger_sys::skip_test(
            "a_first_boot_prepares_keys_run_dir_and_config needs /usr/bin/ssh-keygen",
        );
        return;
    }
    let root = root_with_config(DEBIAN_CONFIG);
    let sshd = sshd_in(root.path());
    let args = sshd.prepare(Reaper::global()).await;
    assert_eq!(
        args,
        vec!["-h".to_string(), HOST_KEY.to_string()],
        "only the ed25519 host key is served"
    );
    assert!(!missing_host_keys(root.path()));
    assert!(root.path().join("etc/ssh/ssh_host_ed25519_key").is_file());
    assert!(
        !root.path().join("etc/ssh/ssh_host_rsa_key").exists(),
        "no slow rsa key"
    );
    assert!(root.path().join("run/sshd").is_dir());
    assert!(root.path().join(DROP_IN).is_file());
}

#[test]
fn an_installed_host_key_replaces_the_old_one_privately() {
    let root = tempfile::tempdir().unwrap();
    let sshd = sshd_in(root.path());
    let key = SshHostKey {
        private: "-----BEGIN OPENSSH PRIVATE KEY-----\nnew\n".into(),
        public: "ssh-ed25519 NEW".into(),
    };
    assert!(
        !sshd.install_host_key(&key).unwrap(),
        "no sshd: nothing to do"
    );
    std::fs::create_dir_all(root.path().join("usr/sbin")).unwrap();
    std::fs::write(root.path().join("usr/sbin/sshd"), "").unwrap();
    let etc = root.path().join("etc/ssh");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("ssh_host_ed25519_key"), "old").unwrap();
    std::fs::write(etc.join("ssh_host_ed25519_key.pub"), "ssh-ed25519 OLD\n").unwrap();
    assert!(sshd.install_host_key(&key).unwrap());
    let private = etc.join("ssh_host_ed25519_key");
    assert_eq!(std::fs::read_to_string(&private).unwrap(), key.private);
    assert_eq!(std::fs::metadata(&private).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(etc.join("ssh_host_ed25519_key.pub")).unwrap(),
        "ssh-ed25519 NEW\n"
    );
    let left: Vec<_> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "nothing but the key pair: {left:?}");
}

#[test]
fn only_an_sshd_with_sshd_session_needs_a_restart_for_a_new_key() {
    let root = tempfile::tempdir().unwrap();
    assert!(
        !keys_read_once(root.path()),
        "OpenSSH before 9.8 reads keys per connection"
    );
    for at in SSHD_SESSION {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(at);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "").unwrap();
        assert!(keys_read_once(root.path()), "{at}");
    }
}
