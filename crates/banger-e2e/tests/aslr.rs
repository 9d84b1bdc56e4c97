//! End-to-end: under TCG a guest's processes run without address-space
//! randomisation (QEMU translates code per virtual address, so with ASLR
//! every exec translated libc and its loader again), unless the config
//! keeps it (`tcg_aslr = true`); a KVM guest always has it.

use banger_e2e::{Env, boot_permit, skip};

const CONFIG: &str = "default_memory_mib = 256\ndefault_disk_size_mib = 512\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

/// The guest's ASLR setting, and whether two processes got one stack.
fn layout(env: &Env, vm: &str) -> (String, bool) {
    let setting = env.ok(&[
        "vm",
        "exec",
        vm,
        "--",
        "cat",
        "/proc/sys/kernel/randomize_va_space",
    ]);
    let stack = || {
        env.ok(&["vm", "exec", vm, "--", "grep", "stack", "/proc/self/maps"])
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let (a, b) = (stack(), stack());
    assert!(
        !a.is_empty(),
        "no [stack] line in the guest's /proc/self/maps"
    );
    (setting.trim().to_string(), a == b)
}

#[test]
fn tcg_guests_run_without_aslr_unless_configured() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();

    env.ok(&["vm", "create", "--name", "plain"]);
    let accel = env.json(&["vm", "show", "plain", "--json"])["accel"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (setting, same) = layout(&env, "plain");
    if accel != "tcg" {
        assert_eq!(setting, "2", "a {accel} guest keeps ASLR");
        eprintln!("only the default checked: this host runs guests under {accel}, not TCG");
        return;
    }
    assert_eq!(setting, "0");
    assert!(same, "two processes got different stacks with ASLR off");
    env.ok(&["vm", "delete", "plain"]);

    env.reconfigure(&format!("{CONFIG}tcg_aslr = true\n"));
    env.ok(&["daemon", "stop"]);
    env.ok(&["vm", "create", "--name", "random"]);
    let (setting, same) = layout(&env, "random");
    assert_eq!(setting, "2");
    assert!(!same, "two processes got one stack with ASLR on");
    env.ok(&["vm", "delete", "random"]);
}
