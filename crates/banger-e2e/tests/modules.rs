//! End-to-end: the guest agent loads its kernel modules without their
//! signatures (each check costs a TCG guest milliseconds), which a kernel
//! that does not enforce signatures notes as taint `E`; a kernel told to
//! enforce them (`module.sig_enforce=1`, here through the image's kernel
//! command line) refuses those, and the agent loads the signed modules
//! instead: the guest boots either way.

use banger_e2e::{Env, boot_permit, skip};

const CONFIG: &str = "default_memory_mib = 256\ndefault_disk_size_mib = 512\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

/// The kernel's taint flags, and its log lines about module signatures.
fn taint_and_log(env: &Env, vm: &str) -> (u64, String) {
    let tainted = env.ok(&["vm", "exec", vm, "--", "cat", "/proc/sys/kernel/tainted"]);
    let log = env.ok(&["vm", "exec", vm, "--", "dmesg"]);
    let lines = log
        .lines()
        .filter(|l| l.contains("module verification") || l.contains("unsigned module"))
        .collect::<Vec<_>>()
        .join("\n");
    (tainted.trim().parse().unwrap(), lines)
}

/// Taint `E`: an unsigned module was loaded.
const TAINT_UNSIGNED_MODULE: u64 = 1 << 13;

#[test]
fn modules_load_unsigned_unless_the_kernel_enforces_signatures() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();

    env.ok(&["vm", "create", "--name", "plain"]);
    let (tainted, log) = taint_and_log(&env, "plain");
    assert_ne!(tainted & TAINT_UNSIGNED_MODULE, 0, "taint {tainted}: {log}");
    assert!(log.contains("module verification failed"), "{log}");
    env.ok(&["vm", "delete", "plain"]);

    // The image's kernel command line, as `image register` records it.
    env.ok(&["daemon", "stop"]);
    let db = rusqlite::Connection::open(env.state_dir().join("banger.db")).unwrap();
    let changed = db
        .execute(
            "UPDATE images SET manifest = json_set(manifest, '$.kernel_cmdline', 'module.sig_enforce=1') WHERE name = 'minimal'",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    env.ok(&["vm", "create", "--name", "strict"]);
    let cmdline = env.ok(&["vm", "exec", "strict", "--", "cat", "/proc/cmdline"]);
    assert!(cmdline.contains("module.sig_enforce=1"), "{cmdline}");
    let (tainted, log) = taint_and_log(&env, "strict");
    assert_eq!(tainted & TAINT_UNSIGNED_MODULE, 0, "taint {tainted}: {log}");
    assert!(
        log.contains("Loading of unsigned module is rejected"),
        "the agent tried unsigned first: {log}"
    );
    // The disks and the agent's port came up: the signed modules loaded.
    let hostname = env.ok(&["vm", "exec", "strict", "--", "hostname"]);
    assert_eq!(hostname.trim(), "strict");
    env.ok(&["vm", "delete", "strict"]);
}
