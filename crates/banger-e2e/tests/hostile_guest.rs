//! End-to-end: what a hostile guest, or a forged scratch file, can do to
//! the host. A guest flooding its console keeps it under the cap on disk
//! and the daemon small; a `handles.json` naming a process that is not the
//! VM's engine gets that process no signal.

use banger_core::console::SEGMENT_CAP;
use banger_e2e::{Env, boot_permit, process_alive, skip, wait_until};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const CONFIG: &str = "default_memory_mib = 256\ndefault_disk_size_mib = 512\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

/// What the guest writes: several caps' worth (about 30 s under TCG).
const FLOOD_BYTES: u64 = 8 * SEGMENT_CAP;

/// How far past the cap a console may grow between two checks (the guest
/// writes about 1 MB/s under TCG; the daemon checks four times a second).
const SLACK: u64 = 2 * 1024 * 1024;

fn vm_json(env: &Env, name: &str) -> serde_json::Value {
    env.json(&["vm", "show", name, "--json"])
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The peak resident set of `pid` in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in status")
}

#[test]
fn a_flooding_guest_keeps_its_console_capped_and_the_daemon_small() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    // A fresh daemon: building the image has a peak of its own.
    env.ok(&["daemon", "stop"]);
    let _permit = boot_permit();
    env.ok(&["vm", "create", "--name", "flood"]);
    let dir = PathBuf::from(vm_json(&env, "flood")["dir"].as_str().unwrap());
    let (console, previous) = (dir.join("console.log"), dir.join("console.log.1"));
    let daemon = env.daemon_pid().expect("daemon runs");

    let script = format!("head -c {FLOOD_BYTES} /dev/zero | tr '\\0' A > /dev/console");
    let mut flood = env
        .cmd(&["vm", "exec", "flood", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (mut largest, mut largest_previous) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut logs_during = None;
    while flood.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the flood did not end");
        largest = largest.max(size(&console));
        largest_previous = largest_previous.max(size(&previous));
        if logs_during.is_none() && size(&previous) > 0 {
            // Mid-flood, the whole console streams out.
            logs_during = Some(env.cmd(&["vm", "logs", "flood"]).output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(flood.wait().unwrap().success(), "the flood ran");

    assert!(
        largest_previous > 0,
        "{FLOOD_BYTES} bytes rotated the console at least once"
    );
    assert!(
        largest <= SEGMENT_CAP + SLACK,
        "console.log reached {largest} bytes; the cap is {SEGMENT_CAP}"
    );
    assert!(
        largest_previous <= SEGMENT_CAP + SLACK,
        "console.log.1 reached {largest_previous} bytes"
    );
    let during = logs_during.expect("vm logs ran during the flood");
    assert!(during.status.success());
    assert!(
        during.stdout.len() as u64 <= 2 * (SEGMENT_CAP + SLACK) && during.stdout.ends_with(b"AAAA"),
        "vm logs sent {} bytes",
        during.stdout.len()
    );

    // The console still works after the flood, and `vm logs` shows it.
    env.ok(&[
        "vm",
        "exec",
        "flood",
        "--",
        "sh",
        "-c",
        "echo; echo after-the-flood > /dev/console",
    ]);
    assert!(wait_until(Duration::from_secs(5), || {
        String::from_utf8_lossy(&env.cmd(&["vm", "logs", "flood"]).output().unwrap().stdout)
            .contains("after-the-flood")
    }));
    let peak = peak_rss_kib(daemon);
    eprintln!(
        "console.log peaked at {largest} bytes, console.log.1 at {largest_previous}; daemon peak {peak} KiB"
    );
    assert!(
        peak < 64 * 1024,
        "the daemon's peak resident set grew to {peak} KiB"
    );
    env.ok(&["vm", "delete", "flood"]);
}

/// Writes a `handles.json` for the VM in `dir` that claims `pid` with
/// these sockets.
fn forge(dir: &Path, pid: u32, agent_socket: &Path, control_socket: &Path) {
    let scratch = serde_json::json!({
        "engine": "qemu",
        "pid": pid,
        "accel": "tcg",
        "agent_socket": agent_socket,
        "control_socket": control_socket,
        "started_at": 0,
        "capabilities": {},
    });
    std::fs::write(dir.join("handles.json"), scratch.to_string()).unwrap();
}

#[test]
fn a_forged_scratch_file_gets_no_unrelated_process_signalled() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();
    env.ok(&["vm", "create", "--name", "victim"]);
    env.ok(&["vm", "stop", "victim"]);
    let vm = vm_json(&env, "victim");
    let dir = PathBuf::from(vm["dir"].as_str().unwrap());
    let run = env
        .runtime_dir()
        .join("vms")
        .join(vm["id"].as_str().unwrap());
    let mut sleep = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let pid = sleep.id();

    // Sockets outside the VM's own runtime dir, one of them empty (a
    // substring of every argument): the file is dropped unread.
    // Then the VM's own sockets: the file is read, but the process is no
    // QEMU with those arguments.
    let forgeries: [(&str, PathBuf, PathBuf); 2] = [
        (
            "foreign sockets",
            PathBuf::from("/tmp/elsewhere/agent.sock"),
            PathBuf::new(),
        ),
        (
            "its own sockets",
            run.join("agent.sock"),
            run.join("qmp.sock"),
        ),
    ];
    for (what, agent, control) in forgeries {
        env.ok(&["daemon", "stop"]);
        forge(&dir, pid, &agent, &control);
        // The next command starts a daemon, which reconciles first.
        env.ok(&["vm", "list"]);
        std::thread::sleep(Duration::from_secs(1));
        assert!(process_alive(pid), "{what}: the sleep was killed");
        assert_eq!(vm_json(&env, "victim")["state"], "stopped", "{what}");
        assert!(
            !dir.join("handles.json").exists(),
            "{what}: the scratch file is dropped"
        );
    }
    sleep.kill().unwrap();
    sleep.wait().unwrap();
    env.ok(&["vm", "delete", "victim"]);
}
