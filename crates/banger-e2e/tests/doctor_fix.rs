//! `banger doctor --fix` removes what an instance left behind that no VM
//! owns, and `banger doctor` lists it first: a tap with this instance's
//! prefix, dnsmasq and the bridge up with no bridge VM, a VM directory with
//! an overlay and no row, and a process carrying one of the instance's VM
//! socket paths. Everything is planted inside a network namespace the test
//! makes (root needed); no VM boots.

use banger_e2e::{Env, process_alive, skip_unless_root_with, wait_until};
use std::process::Command;
use std::time::Duration;

fn leaks(report: &serde_json::Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "leak")
        .map(|c| {
            (
                c["status"].as_str().unwrap().to_string(),
                c["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn doctor_lists_and_fix_removes_a_leaked_tap_dnsmasq_bridge_overlay_and_process() {
    if skip_unless_root_with("a network namespace, taps and dnsmasq", &["dnsmasq", "ip"]) {
        return;
    }
    let env = Env::in_netns("network = \"none\"\n");
    env.ok(&["vm", "list"]); // the daemon runs, reconciled and clean
    let prefix = banger_core::net::tap_pool::instance_prefix(&env.state_dir());
    let tap = format!("{prefix}dead01");
    let sh = |script: &str| {
        let st = env.host_cmd("sh").args(["-c", script]).status().unwrap();
        assert!(st.success(), "{script}");
    };
    sh(&format!(
        "ip tuntap add name {tap} mode tap && ip link add banger0 type bridge"
    ));
    let dns = env.runtime_dir().join("dns");
    std::fs::create_dir_all(&dns).unwrap();
    sh(&format!(
        "dnsmasq --port=0 --conf-file=/dev/null --pid-file={}",
        dns.join("dnsmasq.pid").display()
    ));
    let orphan = env.state_dir().join("vms/0123456789abcdef");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("root.qcow2"), b"overlay").unwrap();
    let mark = env.runtime_dir().join("vms/0123456789abcdef/qmp.sock");
    let mut stray = Command::new("sh")
        .args(["-c", "sleep 600"])
        .arg(&mark)
        .spawn()
        .unwrap();
    let stray_pid = stray.id();

    let found = leaks(&env.json(&["doctor", "--json"]));
    let text = format!("{found:?}");
    for want in [
        tap.as_str(),
        "dnsmasq",
        "bridge banger0",
        "0123456789abcdef",
        "process",
    ] {
        assert!(text.contains(want), "doctor lists {want}: {text}");
    }
    assert!(found.iter().all(|(s, _)| s == "warn"), "{text}");

    let out = env.run(&["doctor", "--fix", "--json"]);
    let fixed = leaks(&serde_json::from_slice(&out.stdout).unwrap());
    assert!(
        !fixed.is_empty()
            && fixed
                .iter()
                .all(|(s, d)| s == "pass" && d.starts_with("removed: ")),
        "{fixed:?}"
    );
    let _ = stray.wait();
    assert!(!process_alive(stray_pid), "the stray process is gone");
    assert!(!orphan.exists(), "the orphan overlay is gone");
    let link = |name: &str| {
        env.host_cmd("ip")
            .args(["link", "show", name])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!link(&tap) && !link("banger0"), "tap and bridge are gone");
    assert!(
        wait_until(Duration::from_secs(5), || !dns.join("dnsmasq.pid").exists()),
        "dnsmasq is stopped"
    );
    let after = env.json(&["doctor", "--json"]);
    assert!(leaks(&after).is_empty(), "{:?}", leaks(&after));
    assert!(
        after["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "leaks" && c["status"] == "pass")
    );
}

/// Another instance's runtime dir can end with this one's (`/tmp/x` +
/// `/run/banger`): its VMs' processes carry paths that contain this
/// instance's, and neither a daemon's start-up sweep nor `doctor --fix` may
/// take them for its own. (The system daemon, started on demand, once
/// killed a test instance's QEMU this way.)
#[test]
fn another_instance_whose_paths_end_like_ours_keeps_its_processes() {
    if skip_unless_root_with("a network namespace", &["ip"]) {
        return;
    }
    let env = Env::in_netns("network = \"none\"\n");
    env.ok(&["vm", "list"]);
    let ours = env.runtime_dir().join("vms/0123456789abcdef/qmp.sock");
    let theirs = format!("/tmp/elsewhere{}", ours.display());
    let mut other = Command::new("sh")
        .args(["-c", "sleep 600"])
        .arg(format!("unix:{theirs},server=on"))
        .spawn()
        .unwrap();
    let pid = other.id();

    let found = leaks(&env.json(&["doctor", "--json"]));
    env.ok(&["doctor", "--fix"]);
    // A daemon's start-up reconcile sweeps too.
    env.ok(&["daemon", "stop"]);
    env.ok(&["vm", "list"]);
    let survived = process_alive(pid);
    let _ = other.kill();
    let _ = other.wait();
    assert!(found.is_empty(), "not ours to list: {found:?}");
    assert!(survived, "the other instance's process survives");
}

/// Two instances in one namespace whose marks are the same (once in
/// 65,536: the tap prefix has room for four hex digits) have the same tap
/// prefix: each tap's alias says whose it is, so neither's sweep, nor its
/// `doctor --fix`, takes the other's taps. A tap with no alias (made before
/// taps were labelled) counts as the instance's own. The NAT table is named
/// with 16 digits now; a table an older banger named with the mark is
/// swept at start by the instance whose bridge its rules are for.
#[test]
fn an_instance_with_the_same_mark_keeps_to_its_own_taps_and_nat_table() {
    use banger_core::net::tap_pool::{instance_mark, instance_prefix, owner_tag};
    if skip_unless_root_with("a network namespace, taps and nftables", &["ip", "nft"]) {
        return;
    }
    let a = Env::in_netns("network = \"none\"\n");
    let b = Env::in_netns_of("network = \"none\"\nbridge_name = \"bangerb\"\n", &a);
    let mark = instance_mark(&a.state_dir());
    let home = (0..)
        .map(|n| b.root.path().join(format!("s{n}")))
        .find(|h| instance_mark(&h.join("banger")) == mark)
        .unwrap();
    let b = b.with_state_home(home);
    let prefix = instance_prefix(&a.state_dir());
    assert_eq!(
        instance_prefix(&b.state_dir()),
        prefix,
        "the marks are the same"
    );
    let sh = |script: &str| {
        let st = a.host_cmd("sh").args(["-c", script]).status().unwrap();
        assert!(st.success(), "{script}");
    };
    let links = || {
        let out = a.host_cmd("ip").args(["-br", "link"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    a.ok(&["vm", "list"]); // a's daemon runs, swept already
    // Taps as each would make them, and one from before labels.
    let (tap_a, tap_b, unlabelled) = (
        format!("{prefix}aaaa01"),
        format!("{prefix}bbbb01"),
        format!("{prefix}0ld001"),
    );
    sh(&format!(
        "ip tuntap add name {tap_a} mode tap && ip link set {tap_a} alias {} && \
         ip tuntap add name {tap_b} mode tap && ip link set {tap_b} alias {} && \
         ip tuntap add name {unlabelled} mode tap",
        owner_tag(&a.state_dir()),
        owner_tag(&b.state_dir()),
    ));
    // Tables an older banger named with the mark: one for each bridge.
    let legacy = format!("banger_{mark}");
    sh(&format!(
        "nft add table ip {legacy} && nft add chain ip {legacy} input '{{ type filter hook input priority filter; }}' && \
         nft add rule ip {legacy} input iifname \"bangerb\" counter drop"
    ));

    // a's doctor lists its own leaked tap and the unlabelled one, not b's.
    let text = format!("{:?}", leaks(&a.json(&["doctor", "--json"])));
    assert!(
        text.contains(&tap_a) && text.contains(&unlabelled),
        "{text}"
    );
    assert!(!text.contains(&tap_b), "b's tap is not a's leak: {text}");
    a.ok(&["doctor", "--fix"]);
    let now = links();
    assert!(!now.contains(&tap_a) && !now.contains(&unlabelled), "{now}");
    assert!(
        now.contains(&tap_b),
        "b's tap survives a's doctor --fix: {now}"
    );
    // a's start-up sweep leaves b's tap, and the old table of b's bridge.
    a.ok(&["daemon", "stop"]);
    a.ok(&["vm", "list"]);
    assert!(links().contains(&tap_b), "b's tap survives a's sweep");
    let tables = || {
        let out = a.host_cmd("nft").args(["list", "tables"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(tables().contains(&legacy), "not a's table: {}", tables());
    // b's sweep takes its own tap and the old table of its bridge.
    b.ok(&["vm", "list"]);
    assert!(
        wait_until(Duration::from_secs(10), || !links().contains(&tap_b)),
        "b sweeps its own tap: {}",
        links()
    );
    assert!(
        !tables().contains(&legacy),
        "b sweeps the old table: {}",
        tables()
    );
}
