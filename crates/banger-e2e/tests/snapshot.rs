//! End-to-end: snapshots of a real guest and restores of them, through the
//! real CLI and daemon. A counter running in the guest (a session, its
//! count in the shell's memory) is still counting after a restore, from
//! where the snapshot caught it; a file written after the snapshot is gone;
//! the restored VM answers `vm exec` and can be snapshotted again; list and
//! delete; `--stop` leaves the VM stopped and a restore brings it back; a
//! new VM created from a snapshot runs the snapshot's guest on disks of its
//! own; `vm fork` makes running copies.
//! Prints what each step took (the figures in ARCHITECTURE.md).

use banger_e2e::{Env, boot_permit, pss_kib, skip, wait_until};
use std::time::{Duration, Instant};

const CONFIG: &str = "default_memory_mib = 256\ndefault_disk_size_mib = 512\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

const VM: &str = "snappy";

fn counter(env: &Env) -> u64 {
    let out = env.ok(&["vm", "exec", VM, "--", "cat", "/root/counter"]);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("counter: {out:?}"))
}

fn count_in(env: &Env, vm: &str) -> u64 {
    let out = env.ok(&["vm", "exec", vm, "--", "cat", "/root/counter"]);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("counter: {out:?}"))
}

fn timed(env: &Env, what: &str, args: &[&str]) -> (String, Duration) {
    let t0 = Instant::now();
    let out = env.ok(args);
    let took = t0.elapsed();
    eprintln!("FIGURE {what}: {} ms", took.as_millis());
    (out, took)
}

/// Runs `script` in the guest of `VM`.
fn sh(env: &Env, script: &str) -> String {
    env.ok(&["vm", "exec", VM, "--", "sh", "-c", script])
}

/// Bytes on disk of the files under `dir` no other directory links.
fn only_in(dir: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &std::path::Path, sum: &mut u64) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                walk(&e.path(), sum);
            } else if m.nlink() == 1 {
                *sum += m.blocks() * 512;
            }
        }
    }
    let mut sum = 0;
    walk(std::path::Path::new(dir), &mut sum);
    sum
}

fn snapshots(env: &Env) -> Vec<serde_json::Value> {
    env.json(&["vm", "snapshot", "list", VM, "--json"])
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_restored_vm_is_back_at_its_snapshot_with_its_processes_running() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();
    env.ok(&["vm", "create", "--name", VM]);
    // 32 MB on the work disk before any snapshot: the VMs made from its
    // snapshots link the disk under them, not copy it.
    sh(
        &env,
        "dd if=/dev/urandom of=/root/blob bs=1M count=32 2>/dev/null && sync",
    );
    let blob = env.ok(&["vm", "exec", VM, "--", "md5sum", "/root/blob"]);
    env.ok(&[
        "vm",
        "session",
        "start",
        VM,
        "--name",
        "counter",
        "--",
        "sh",
        "-c",
        // Renamed into place: a reader never sees it half written.
        "i=0; while true; do i=$((i+1)); echo $i > /root/c.tmp; mv /root/c.tmp /root/counter; sleep 0.2; done",
    ]);
    assert!(
        wait_until(Duration::from_secs(20), || env
            .run(&["vm", "exec", VM, "--", "cat", "/root/counter"])
            .stdout
            .len()
            > 1
            && counter(&env) >= 5),
        "the counter never counted"
    );

    // Snapshot, and the VM runs on.
    let before = counter(&env);
    let (name, _) = timed(
        &env,
        "snapshot (running vm)",
        &["vm", "snapshot", VM, "--name", "first"],
    );
    assert_eq!(name.trim(), "first");
    let at_snapshot = counter(&env);
    assert!(at_snapshot >= before);
    let list = snapshots(&env);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "first");
    let size = list[0]["size_bytes"].as_u64().unwrap();
    eprintln!("FIGURE snapshot size on disk: {} KiB", size / 1024);
    assert!(size > 0);

    // Time passes, a file is written; the restore undoes both.
    std::thread::sleep(Duration::from_secs(3));
    sh(&env, "echo later > /root/after");
    let before_restore = counter(&env);
    assert!(
        before_restore > at_snapshot + 5,
        "the counter kept counting"
    );
    timed(
        &env,
        "restore to agent answering",
        &["vm", "restore", VM, "first"],
    );
    let restored = counter(&env);
    assert!(
        restored >= before && restored < before_restore,
        "counter after restore {restored}: the snapshot caught it between {before} and {at_snapshot}, it had reached {before_restore}"
    );
    let out = env.run(&["vm", "exec", VM, "--", "cat", "/root/after"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a file written after the snapshot survived the restore"
    );
    assert!(
        wait_until(Duration::from_secs(10), || counter(&env) > restored + 2),
        "the counter does not run after the restore"
    );
    assert_eq!(
        env.ok(&["vm", "exec", VM, "--", "echo", "answers"]).trim(),
        "answers"
    );

    // The restored VM snapshots again, with --stop, and comes back from that.
    timed(
        &env,
        "snapshot --stop (restored vm)",
        &["vm", "snapshot", VM, "--name", "second", "--stop"],
    );
    assert_eq!(env.json(&["vm", "show", VM, "--json"])["state"], "stopped");
    let stopped_at = {
        // The work disk is the guest's; its counter file is what the snapshot froze.
        timed(
            &env,
            "restore a stopped vm",
            &["vm", "restore", VM, "second"],
        );
        counter(&env)
    };
    assert!(
        wait_until(Duration::from_secs(10), || counter(&env) > stopped_at + 2),
        "the counter does not run after the second restore"
    );

    // Forks: new vms from the running one, each counting on from where
    // the fork caught it, their RAM shared with each other where unchanged.
    let (out, _) = timed(
        &env,
        "fork --count 2",
        &["vm", "fork", VM, "--count", "2", "--prefix", "try"],
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["try-1", "try-2"]);
    for f in ["try-1", "try-2"] {
        let c = count_in(&env, f);
        assert!(
            wait_until(Duration::from_secs(10), || count_in(&env, f) > c + 2),
            "the counter does not run in fork {f}"
        );
    }
    let pss = |vm: &str| pss_kib(env.vm_pid(vm));
    let (a, b, source) = (pss("try-1"), pss("try-2"), pss(VM));
    eprintln!(
        "FIGURE fork pss: try-1 {a} KiB + try-2 {b} KiB = {} KiB; the source vm {source} KiB",
        a + b
    );
    assert!(
        env.json(&["vm", "snapshot", "list", VM, "--json"])
            .as_array()
            .unwrap()
            .iter()
            .all(|s| !s["name"].as_str().unwrap().starts_with("fork-")),
        "fork leaves no snapshot behind"
    );
    // The first snapshot froze the work disk with the blob on it, and the
    // forks hold that layer too (linked): its size counts it apart.
    let first = |env: &Env| snapshots(env)[0].clone();
    let shared = first(&env);
    assert!(
        shared["shared_bytes"].as_u64().unwrap() >= 32 << 20,
        "{shared}"
    );
    env.ok(&["vm", "delete", "try-1", "try-2"]);
    let alone = first(&env);
    assert_eq!(alone["shared_bytes"], 0, "{alone}");
    assert!(alone["size_bytes"].as_u64().unwrap() >= 32 << 20, "{alone}");

    // List and delete.
    let names: Vec<String> = snapshots(&env)
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["first", "second"]);
    env.ok(&["vm", "snapshot", "delete", VM, "first"]);
    let names: Vec<String> = snapshots(&env)
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["second"]);
    let out = env.run(&["vm", "restore", VM, "first"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no snapshot named"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first snapshot's frozen layers still carry the disks: a restart boots.
    env.ok(&["vm", "restart", VM]);
    env.ok(&["vm", "exec", VM, "--", "true"]);

    // A new vm from a snapshot: its own record, the snapshot's guest, and
    // disks of its own (it outlives the vm it came from).
    let from = format!("{VM}/second");
    timed(
        &env,
        "create --from-snapshot to agent answering",
        &["vm", "create", "--name", "copy", "--from-snapshot", &from],
    );
    let copy = env.json(&["vm", "show", "copy", "--json"]);
    assert_eq!(copy["state"], "running");
    assert_ne!(copy["id"], env.json(&["vm", "show", VM, "--json"])["id"]);
    let count = |vm: &str| -> u64 {
        env.ok(&["vm", "exec", vm, "--", "cat", "/root/counter"])
            .trim()
            .parse()
            .unwrap()
    };
    let first = count("copy");
    assert!(
        wait_until(Duration::from_secs(10), || count("copy") > first + 2),
        "the snapshot's counter does not run in the new vm"
    );
    // The disks under the snapshot's layers are linked, not copied: the
    // bytes only it holds on the host are what its source wrote after its
    // first snapshot (a few MB here) and its own writes since.
    let own = only_in(copy["dir"].as_str().unwrap());
    eprintln!("FIGURE create --from-snapshot: {own} bytes of disk its own");
    assert!(
        own < 16 << 20,
        "the new vm copied its disks: {own} bytes its own"
    );
    env.ok(&["vm", "delete", VM]);
    env.ok(&["vm", "restart", "copy"]);
    env.ok(&["vm", "exec", "copy", "--", "ls", "/root/counter"]);
    assert_eq!(
        env.ok(&["vm", "exec", "copy", "--", "md5sum", "/root/blob"]),
        blob,
        "the work disk's file, read through the links after its source went"
    );
    env.ok(&["vm", "delete", "copy"]);
}
