//! End-to-end: warm images. `image warm` boots the image once and keeps a
//! snapshot at agent-ready, and makes a standby from it (hidden from `vm
//! list`); a `vm run` asking for the default machine then takes the
//! standby (with `warm_standby = false`: is restored from the snapshot),
//! not a boot, and answers exactly as a booted one does: the command's
//! stdout, stderr and exit status, in a guest that is its own machine (its
//! hostname is its VM's). A VM asking for another
//! machine boots, and `--verbose` says why; `--cold` boots on request; a
//! rebuilt image makes the snapshot stale (shown, and VMs boot); `image
//! warm --remove` forgets the snapshot. Nothing is left: no VM
//! (the warming one included) and no staging directory.
//! Prints what each step took.

use banger_e2e::{Env, boot_permit, skip};
use std::time::Instant;

const CONFIG: &str = "default_memory_mib = 256\ndefault_disk_size_mib = 512\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

/// What a command printed and how it ended.
struct Outcome {
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

fn run(env: &Env, args: &[&str]) -> Outcome {
    let t0 = Instant::now();
    let out = env.run(args);
    eprintln!("FIGURE {}: {} ms", args.join(" "), t0.elapsed().as_millis());
    Outcome {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

/// A command with output on both streams and its own exit status, which
/// prints the guest's hostname.
const COMMAND: &[&str] = &[
    "sh",
    "-c",
    "echo out-$((6*7)); echo err-1 >&2; hostname; exit 7",
];

fn vm_run(env: &Env, name: &str, extra: &[&str]) -> Outcome {
    let mut args = vec![
        "vm",
        "run",
        "--rm",
        "--no-checkout",
        "--verbose",
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(COMMAND);
    run(env, &args)
}

fn vms(env: &Env) -> usize {
    env.json(&["vm", "list", "--json"])
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn a_warm_vm_run_answers_exactly_as_a_booted_one() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();

    // No warm snapshot yet: a boot, saying why.
    let first = vm_run(&env, "before", &[]);
    assert_eq!(first.code, Some(7), "{}", first.stderr);
    assert!(
        first.stderr.contains("has no warm snapshot"),
        "--verbose says why it booted: {}",
        first.stderr
    );

    let t0 = Instant::now();
    env.ok(&["image", "warm", "minimal"]);
    eprintln!("FIGURE image warm: {} ms", t0.elapsed().as_millis());
    let image = env.json(&["image", "show", "minimal", "--json"]);
    let warm = &image["warm"];
    assert_eq!(warm["cpus"], 1, "{image}");
    assert_eq!(warm["memory_mib"], 256, "{image}");
    assert_eq!(warm["disk_size_mib"], 512, "{image}");
    assert!(warm["stale"].is_null(), "{image}");
    assert!(warm["size_bytes"].as_u64().unwrap() > 0, "{image}");
    // Ready when `image warm` returns: `image warm && vm run` takes it.
    assert_eq!(warm["standby"], "ready", "{image}");
    assert_eq!(vms(&env), 0, "the warming vm is gone, the standby hidden");
    let listed = env.ok(&["image", "list"]);
    assert!(listed.contains("1 cpu, 256 MiB"), "{listed}");

    let cold = vm_run(&env, "cold-one", &["--cold"]);
    let warm = vm_run(&env, "warm-one", &[]);
    assert!(
        cold.stderr.contains("booting: --cold") && cold.stderr.contains("start engine"),
        "{}",
        cold.stderr
    );
    assert!(
        warm.stderr
            .contains("made ahead from the warm snapshot of image minimal")
            && warm.stderr.contains("take the standby")
            && !warm.stderr.contains("restore engine")
            && !warm.stderr.contains("start engine"),
        "the vm took the standby, neither restored nor booted: {}",
        warm.stderr
    );
    assert_eq!(cold.code, Some(7));
    assert_eq!(warm.code, Some(7), "{}", warm.stderr);
    assert_eq!(cold.stdout, "out-42\ncold-one\n");
    assert_eq!(
        warm.stdout, "out-42\nwarm-one\n",
        "the same output, from a guest that took its own name"
    );
    for o in [&cold, &warm] {
        assert!(o.stderr.contains("err-1\n"), "{}", o.stderr);
    }
    // The next one is made ahead again.
    assert!(env.standby_ready("minimal"), "a taken standby is replaced");
    // Without --verbose the choice is not shown.
    let quiet = run(&env, &["vm", "run", "--rm", "--no-checkout", "--", "true"]);
    assert_eq!(quiet.code, Some(0), "{}", quiet.stderr);
    assert!(
        !quiet.stderr.contains("warm snapshot") && quiet.stderr.contains("take the standby"),
        "{}",
        quiet.stderr
    );

    // Without standbys, a warm create restores the snapshot.
    env.ok(&["daemon", "stop"]);
    env.reconfigure(&format!("{CONFIG}warm_standby = false\n"));
    let restored = vm_run(&env, "restored-one", &[]);
    assert_eq!(restored.code, Some(7), "{}", restored.stderr);
    assert_eq!(restored.stdout, "out-42\nrestored-one\n");
    assert!(
        restored
            .stderr
            .contains("restoring the warm snapshot of image minimal")
            && restored.stderr.contains("restore engine"),
        "the vm was restored, not booted: {}",
        restored.stderr
    );
    let image = env.json(&["image", "show", "minimal", "--json"]);
    assert!(image["warm"]["standby"].is_null(), "{image}");

    // Two VMs at once from the warm snapshot, each its own machine.
    env.ok(&["vm", "create", "--name", "w-a"]);
    env.ok(&["vm", "create", "--name", "w-b"]);
    for vm in ["w-a", "w-b"] {
        let host = env.ok(&["vm", "exec", vm, "--", "hostname"]);
        assert_eq!(host.trim(), vm);
        env.ok(&[
            "vm",
            "exec",
            vm,
            "--",
            "sh",
            "-c",
            &format!("echo {vm} > /root/mine"),
        ]);
    }
    for vm in ["w-a", "w-b"] {
        let mine = env.ok(&["vm", "exec", vm, "--", "cat", "/root/mine"]);
        assert_eq!(mine.trim(), vm, "each has a work disk of its own");
    }
    env.ok(&["vm", "delete", "w-a"]);
    env.ok(&["vm", "delete", "w-b"]);

    // Another machine boots, saying which part differs.
    let bigger = vm_run(&env, "bigger", &["--memory", "320"]);
    assert_eq!(bigger.code, Some(7));
    assert!(
        bigger
            .stderr
            .contains("this vm asks for 320 MiB memory (warm: 256)"),
        "{}",
        bigger.stderr
    );

    // A rebuilt image makes it stale: shown so, and VMs boot, saying why.
    env.ok(&["image", "build", "--preset", "minimal", "--force"]);
    let image = env.json(&["image", "show", "minimal", "--json"]);
    assert_eq!(
        image["warm"]["stale"], "the image was rebuilt since",
        "{image}"
    );
    let stale = vm_run(&env, "stale", &[]);
    assert_eq!(stale.code, Some(7));
    assert!(
        stale
            .stderr
            .contains("the warm snapshot is stale: the image was rebuilt since")
            && stale.stderr.contains("start engine"),
        "{}",
        stale.stderr
    );

    env.ok(&["image", "warm", "minimal", "--remove"]);
    let image = env.json(&["image", "show", "minimal", "--json"]);
    assert!(image["warm"].is_null(), "{image}");
    let after = vm_run(&env, "after", &[]);
    assert_eq!(after.code, Some(7));
    assert!(
        after.stderr.contains("has no warm snapshot"),
        "{}",
        after.stderr
    );
    let refused = env.run(&["image", "warm", "minimal", "--remove"]);
    assert!(!refused.status.success(), "nothing to remove is an error");

    assert_eq!(vms(&env), 0);
    let warm_dir = env.state_dir().join("warm");
    let left: Vec<_> = std::fs::read_dir(&warm_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", warm_dir.display());
}
