//! `--reconcile N`: (r1) `vm list` answering after the daemon was killed
//! (SIGKILL) with N recorded VMs, two of them running (start-up, reconcile
//! adopting two and checking the rest), against (r2) the same on an
//! instance with no VM, the floor of a daemon start.

use super::stats::timed;
use banger_e2e::Env;
use std::process::Command;
use std::time::Duration;

/// Kills the env's daemon and waits until it is gone.
fn kill_daemon(env: &Env) {
    let Some(pid) = env.daemon_pid() else { return };
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let dead = banger_e2e::wait_until(Duration::from_secs(10), || !banger_e2e::process_alive(pid));
    assert!(dead, "the daemon {pid} outlived SIGKILL");
}

/// (r1) and (r2): see the module's doc. `env` has the minimal image.
pub fn reconcile_after_kill(env: &Env, n: usize, runs: usize) -> (Vec<f64>, Vec<f64>) {
    assert!(n >= 2, "--reconcile needs at least 2 vms");
    for i in 0..n {
        eprintln!("bench: recording vm {}/{n}", i + 1);
        let name = format!("rec-{i}");
        env.ok(&["vm", "create", "--name", &name, "--memory", "256"]);
        if i >= 2 {
            env.ok(&["vm", "stop", &name]);
        }
    }
    let empty = Env::new("network = \"none\"\n");
    empty.ok(&["vm", "list"]);
    let (mut l, mut m) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprintln!("bench: reconcile run {}/{runs}", i + 1);
        kill_daemon(env);
        let mut list = String::new();
        l.push(timed(|| list = env.ok(&["vm", "list", "--json"])));
        let vms: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
        let running = vms.iter().filter(|v| v["state"] == "running").count();
        assert_eq!(
            (vms.len(), running),
            (n, 2),
            "reconcile kept every vm as it was"
        );
        kill_daemon(&empty);
        m.push(timed(|| {
            empty.ok(&["vm", "list", "--json"]);
        }));
    }
    for i in 0..n {
        env.ok(&["vm", "delete", &format!("rec-{i}")]);
    }
    (l, m)
}
