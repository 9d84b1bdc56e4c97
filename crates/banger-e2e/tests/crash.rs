//! The fault-point loop: the daemon is killed (SIGKILL, through
//! `BANGER_FAULT_AT`, see `banger_core::fault`) at the beginning and at the
//! end of every stage of create, start, stop, delete, snapshot, restore and
//! image build, and in `vm fork`, `image warm`, the making of a standby and
//! a create taking one; the next daemon must then leave
//! nothing behind: no engine process without a running VM, no VM directory
//! or socket directory without a row, no image or warm staging directory,
//! no VM stuck in `creating` or `deleting`, no VM `image warm` made, every
//! state matching reality, the store's integrity intact, and the VM (or
//! the warm snapshot, when one was kept) usable again.
//!
//! The points come from the stages the daemon really runs: the loop fails
//! when a stage it logged is missing from [`POINTS`], so it stays
//! exhaustive as stages are added. `BANGER_CRASH_SOAK=N` runs N more
//! iterations at random points (the soak command in the README).

use banger_e2e::{Env, boot_permit, process_alive, skip, wait_until};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const CONFIG: &str = "default_memory_mib = 256\ndefault_disk_size_mib = 512\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

/// Every kill point the loop covers, as `KIND:STAGE[/done]`.
const POINTS: &[&str] = &[
    "create:warm",
    "create:warm/done",
    "create:disks",
    "create:disks/done",
    "create:prepare",
    "create:prepare/done",
    "create:config",
    "create:config/done",
    "create:engine",
    "create:engine/done",
    "create:agent",
    "create:agent/done",
    "create:identity",
    "create:identity/done",
    // A create taking a standby: mid-takeover, taken.
    "create:standby",
    "create:standby/done",
    "start:prepare",
    "start:prepare/done",
    "start:config",
    "start:engine",
    "start:engine/done",
    "start:agent",
    "start:agent/done",
    "stop:shutdown",
    "stop:shutdown/done",
    "delete:stop",
    "delete:stop/done",
    "delete:files",
    "delete:files/done",
    "snapshot:layers",
    "snapshot:layers/done",
    "snapshot:memory",
    "snapshot:memory/done",
    "snapshot:save",
    "snapshot:save/done",
    "restore:stop",
    "restore:stop/done",
    "restore:layers",
    "restore:layers/done",
    "restore:prepare",
    "restore:prepare/done",
    "restore:config",
    "restore:engine",
    "restore:engine/done",
    "restore:agent",
    "restore:agent/done",
    "restore:identity",
    "restore:identity/done",
    "image_build:fetch_packages",
    "image_build:rootfs",
    "image_build:rootfs/done",
    "image_build:work_seed/done",
    "image_build:finish",
    // `vm fork` of two: mid-snapshot, snapshot saved, before and after
    // the forks' creates, removing its snapshot.
    "fork:layers",
    "fork:memory/done",
    "fork:save/done",
    "fork:forks",
    "fork:forks/done",
    "fork:forget",
    // `image warm`: its vm running, mid-snapshot, the snapshot saved, the
    // warm snapshot about to be swapped in and just swapped in, its vm
    // being removed.
    "image_warm:agent/done",
    "image_warm:memory",
    "image_warm:save/done",
    "image_warm:keep",
    "image_warm:keep/done",
    "image_warm:files",
    // A standby being made (after `image warm`): restored, given its
    // identity, run once, paused.
    "standby:engine/done",
    "standby:identity/done",
    "standby:settle",
    "standby:pause/done",
];

/// Stages that run only on failure paths or in other presets; not killed at.
const NOT_REACHED: &[&str] = &[
    "stop:kill",
    "create:accel",
    "start:accel",
    "restore:accel",
    // `vm snapshot --stop` only; the loop snapshots a vm that runs on.
    "snapshot:stop",
];

const VM: &str = "crashy";

fn daemon_stop(env: &Env) {
    let _ = env.run(&["daemon", "stop"]);
}

/// Runs `args` with the daemon set to die at `point`; the command fails.
fn crash_at(env: &Env, point: &str, args: &[&str]) {
    daemon_stop(env);
    let out = env
        .cmd(args)
        .env(banger_core::fault::ENV, point)
        .output()
        .unwrap();
    eprintln!(
        "$ BANGER_FAULT_AT={point} banger {} -> {:?}\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    );
    if let Some(pid) = env.daemon_pid() {
        // The daemon died at the point (or the command never reached it:
        // then stop it, so the next one starts without the fault).
        if process_alive(pid) {
            daemon_stop(env);
        }
    }
}

/// `image warm` in a daemon set to die at `point` later (the warm itself
/// does not reach it).
fn warm_in_faulty_daemon(env: &Env, point: &str) {
    let out = warm_with_fault(env, point);
    assert!(
        out.status.success(),
        "{point}: image warm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `image warm` in a fresh daemon set to die at `point`.
fn warm_with_fault(env: &Env, point: &str) -> std::process::Output {
    daemon_stop(env);
    env.cmd(&["image", "warm", "minimal"])
        .env(banger_core::fault::ENV, point)
        .output()
        .unwrap()
}

/// Waits for the daemon `pid` to die at `point`; fails the test when it
/// does not (the point was not reached).
fn died_at(env: &Env, pid: Option<u32>, point: &str) {
    let pid = pid.unwrap_or_else(|| panic!("{point}: no daemon"));
    let died = wait_until(Duration::from_secs(120), || !process_alive(pid));
    if !died {
        daemon_stop(env);
    }
    assert!(died, "{point}: the daemon never reached the point");
}

fn vms(env: &Env) -> Vec<serde_json::Value> {
    env.json(&["vm", "list", "--json"])
        .as_array()
        .unwrap()
        .clone()
}

/// QEMU processes of this env, by pid.
fn engines(env: &Env) -> Vec<u32> {
    let root = env.root.path().to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&root)
            })
        })
        .collect()
}

fn dir_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The invariants after a crash and a new daemon's reconcile.
fn check(env: &Env, point: &str) {
    let list = vms(env);
    let mut ids = BTreeSet::new();
    let mut running_pids = BTreeSet::new();
    for vm in &list {
        let state = vm["state"].as_str().unwrap();
        assert!(
            matches!(state, "running" | "stopped" | "failed"),
            "{point}: vm {} left {state}",
            vm["name"]
        );
        ids.insert(vm["id"].as_str().unwrap().to_string());
        if state == "running" {
            let pid = vm["pid"].as_u64().expect("a running vm has a pid") as u32;
            assert!(process_alive(pid), "{point}: running vm's engine is dead");
            running_pids.insert(pid);
        }
    }
    // Engines only for running VMs (an engine being stopped may take a moment).
    assert!(
        wait_until(Duration::from_secs(10), || engines(env)
            .iter()
            .all(|p| running_pids.contains(p))),
        "{point}: engines left without a running vm: {:?} (running {:?})",
        engines(env),
        running_pids
    );
    let state = env.state_dir();
    let vm_dirs = dir_names(&state.join("vms"));
    assert!(
        vm_dirs.is_subset(&ids),
        "{point}: vm dirs without a row: {vm_dirs:?} vs {ids:?}"
    );
    let run_dirs = dir_names(&env.runtime_dir().join("vms"));
    assert!(
        run_dirs.is_subset(&ids),
        "{point}: socket dirs without a row: {run_dirs:?}"
    );
    let staging: Vec<String> = dir_names(&state.join("images"))
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        staging.is_empty(),
        "{point}: image staging left: {staging:?}"
    );
    let warm: Vec<String> = dir_names(&state.join("warm"))
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(warm.is_empty(), "{point}: warm staging left: {warm:?}");
    assert!(
        list.iter()
            .all(|v| !v["name"].as_str().unwrap().starts_with("warm-")),
        "{point}: the warming vm is left: {list:?}"
    );
    let db = rusqlite::Connection::open(state.join("banger.db")).unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "{point}: store integrity");
}

/// The VM, whatever the crash left, can be brought back and used.
fn recover(env: &Env, point: &str) {
    let list = vms(env);
    let Some(vm) = list.iter().find(|v| v["name"] == VM) else {
        return;
    };
    if vm["state"] != "running" {
        env.ok(&["vm", "start", VM]);
    }
    assert_eq!(
        env.ok(&["vm", "exec", VM, "--", "echo", "alive"]),
        "alive\n",
        "{point}: the vm works again"
    );
}

/// Brings the VM to `want` (absent, running or stopped) before a point.
fn arrange(env: &Env, want: &str) {
    let exists = vms(env).iter().any(|v| v["name"] == VM);
    match (want, exists) {
        ("absent", true) => {
            env.ok(&["vm", "delete", VM]);
        }
        ("absent", false) => {}
        (_, false) => {
            env.ok(&["vm", "create", "--name", VM]);
        }
        (_, true) => {}
    }
    if want == "running" {
        env.ok(&["vm", "start", VM]);
    }
    if want == "stopped" {
        env.ok(&["vm", "stop", VM]);
    }
}

fn run_point(env: &Env, point: &str) {
    let (kind, _) = point.split_once(':').unwrap();
    match kind {
        "create" if point.starts_with("create:standby") => {
            arrange(env, "absent");
            // The daemon set to die is the one that made the standby.
            warm_in_faulty_daemon(env, point);
            assert!(env.standby_ready("minimal"), "{point}: no standby");
            let pid = env.daemon_pid();
            let _ = env.run(&["vm", "create", "--name", VM]);
            died_at(env, pid, point);
            check(env, point);
            recover(env, point);
            env.ok(&["image", "warm", "minimal", "--remove"]);
            return;
        }
        "standby" => {
            arrange(env, "absent");
            // `image warm` waits for its first standby: the daemon dies
            // under it, after the warm snapshot was kept.
            let out = warm_with_fault(env, point);
            assert!(
                !out.status.success(),
                "{point}: the daemon never reached the point"
            );
            let log = std::fs::read_to_string(env.state_dir().join("bangerd.log")).unwrap();
            assert!(
                log.contains(&format!("killing the daemon here point={point}")),
                "{point}: image warm failed otherwise: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            check(env, point);
            // The warm snapshot serves, and a standby is made again.
            let out = env.ok(&["vm", "run", "--rm", "--no-checkout", "--", "echo", "alive"]);
            assert_eq!(out, "alive\n", "{point}: a vm from the warm snapshot works");
            assert!(env.standby_ready("minimal"), "{point}: no new standby");
            env.ok(&["image", "warm", "minimal", "--remove"]);
            return;
        }
        "create" => {
            arrange(env, "absent");
            // Only a create restored from a warm snapshot (or taking its
            // standby) has these stages.
            let warm = point.starts_with("create:identity") || point.starts_with("create:standby");
            if warm {
                env.ok(&["image", "warm", "minimal"]);
                assert!(env.standby_ready("minimal"), "{point}: no standby");
            }
            crash_at(env, point, &["vm", "create", "--name", VM]);
            if warm {
                check(env, point);
                recover(env, point);
                env.ok(&["image", "warm", "minimal", "--remove"]);
                return;
            }
        }
        "start" => {
            arrange(env, "stopped");
            crash_at(env, point, &["vm", "start", VM]);
        }
        "stop" => {
            arrange(env, "running");
            crash_at(env, point, &["vm", "stop", VM]);
        }
        "delete" => {
            arrange(env, "running");
            crash_at(env, point, &["vm", "delete", VM]);
        }
        "snapshot" => {
            arrange(env, "running");
            crash_at(env, point, &["vm", "snapshot", VM]);
        }
        "restore" => {
            arrange(env, "running");
            let snaps = env.json(&["vm", "snapshot", "list", VM, "--json"]);
            if !snaps
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "base")
            {
                env.ok(&["vm", "snapshot", VM, "--name", "base"]);
            }
            crash_at(env, point, &["vm", "restore", VM, "base"]);
        }
        "fork" => {
            arrange(env, "running");
            crash_at(env, point, &["vm", "fork", VM, "--count", "2"]);
            check(env, point);
            let snaps = env.json(&["vm", "snapshot", "list", VM, "--json"]);
            assert!(
                snaps
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| !s["name"].as_str().unwrap().starts_with("fork.")),
                "{point}: the fork's snapshot is left: {snaps}"
            );
            // A fork that was made works; then it goes.
            for vm in vms(env) {
                let name = vm["name"].as_str().unwrap().to_string();
                if name.starts_with("crashy-fork-") {
                    if vm["state"] == "running" {
                        env.ok(&["vm", "exec", &name, "--", "true"]);
                    }
                    env.ok(&["vm", "delete", &name]);
                }
            }
        }
        "image_warm" => {
            arrange(env, "absent");
            crash_at(env, point, &["image", "warm", "minimal"]);
            check(env, point);
            // A warm snapshot kept is whole: a vm starts from it.
            let image = env.json(&["image", "show", "minimal", "--json"]);
            if !image["warm"].is_null() {
                let out = env.ok(&[
                    "vm",
                    "run",
                    "--rm",
                    "--no-checkout",
                    "--verbose",
                    "--",
                    "echo",
                    "alive",
                ]);
                assert_eq!(out, "alive\n", "{point}: a vm from the warm snapshot works");
                env.ok(&["image", "warm", "minimal", "--remove"]);
            }
            return;
        }
        "image_build" => {
            crash_at(
                env,
                point,
                &[
                    "image", "build", "--preset", "minimal", "--name", "scratch", "--force",
                ],
            );
        }
        other => panic!("no arrangement for {other}"),
    }
    check(env, point);
    recover(env, point);
}

/// Every point the daemons of this env logged a stage at.
fn logged_points(env: &Env) -> BTreeSet<String> {
    let log = std::fs::read_to_string(env.state_dir().join("bangerd.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| l.split(" point=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(String::from)
        .collect()
}

#[test]
fn killing_the_daemon_at_any_stage_leaves_nothing_behind() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();
    // One clean pass of every operation: the stages really run.
    env.ok(&["vm", "create", "--name", VM]);
    env.ok(&["vm", "stop", VM]);
    env.ok(&["vm", "start", VM]);
    env.ok(&["vm", "snapshot", VM, "--name", "clean"]);
    env.ok(&["vm", "restore", VM, "clean"]);
    env.ok(&["vm", "delete", VM]);
    for point in POINTS {
        run_point(&env, point);
    }
    // Exhaustive: every stage the daemon ran is a point of the loop.
    let seen = logged_points(&env);
    let missing: Vec<&String> = seen
        .iter()
        .filter(|p| !POINTS.contains(&p.as_str()) && !NOT_REACHED.contains(&p.as_str()))
        .filter(|p| {
            !p.starts_with("image_build:")
                && !p.starts_with("image_warm:")
                && !p.starts_with("fork:")
                && !p.starts_with("restart:")
                && !p.starts_with("standby:")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "stages with no kill point in the loop (add them to POINTS): {missing:?}"
    );
    // The soak: more iterations at random points.
    let soak: usize = std::env::var("BANGER_CRASH_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for i in 0..soak {
        let point = POINTS[rand_index(i, POINTS.len())];
        eprintln!("soak {i}/{soak}: {point}");
        run_point(&env, point);
    }
    arrange(&env, "absent");
    check(&env, "the end");
    assert!(engines(&env).is_empty(), "no engine left at the end");
}

/// A cheap pseudo-random index (no rand dependency in the test crate).
fn rand_index(i: usize, n: usize) -> usize {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    (t ^ i.wrapping_mul(2_654_435_761)) % n
}
