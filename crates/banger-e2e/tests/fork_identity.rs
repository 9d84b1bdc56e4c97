//! End-to-end: a restored or forked VM is a machine of its own. On a
//! bridge inside a network namespace the test makes (needs root), two
//! forks of one running VM read different random bytes, have boot ids,
//! hostnames, MACs and addresses of their own (the ones the host leased
//! them, not the snapshot's), reach each other and the source by name; a
//! restore is a new boot too; a VM restored from a snapshot taken seconds
//! earlier has the host's time, not the snapshot's. Prints what a restore
//! and a fork took. And a Debian guest (sshd) serves a new host key after a
//! restore and in each fork, which `vm ssh` pins again and checks strictly.

use banger_e2e::{Env, boot_permit, skip_unless_root_with};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const SRC: &str = "ident";

fn ip_of(env: &Env, name: &str) -> String {
    env.json(&["vm", "show", name, "--json"])["ip"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn sh(env: &Env, vm: &str, script: &str) -> String {
    env.ok(&["vm", "exec", vm, "--", "sh", "-c", script])
}

/// The guest's IPv4 addresses on its NIC (not loopback).
fn guest_addresses(env: &Env, vm: &str) -> Vec<String> {
    sh(env, vm, "ip -4 -o addr show")
        .lines()
        .filter(|l| !l.contains(" lo "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.position(|w| w == "inet")?;
            Some(words.next()?.split('/').next()?.to_string())
        })
        .collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The guest's clock minus the host's, in seconds.
fn clock_skew(env: &Env, vm: &str) -> i64 {
    let before = unix_now();
    let guest: i64 = sh(env, vm, "date +%s").trim().parse().unwrap();
    let after = unix_now();
    if guest < before {
        guest - before
    } else if guest > after {
        guest - after
    } else {
        0
    }
}

#[test]
fn forks_are_machines_of_their_own_on_the_bridge() {
    if skip_unless_root_with(
        "network namespaces, taps and nftables",
        &["nft", "dnsmasq", "ip"],
    ) {
        return;
    }
    // The namespace has no way out to a mirror: the image is built outside.
    let host = Env::new("network = \"none\"\n").with_image();
    let env = Env::in_netns("default_memory_mib = 256\ndefault_disk_size_mib = 512\n");
    env.register_from(&host, "minimal");
    let _permit = boot_permit();
    env.ok(&["vm", "create", "--name", SRC, "--image", "minimal"]);
    let src_mac = sh(&env, SRC, "cat /sys/class/net/eth0/address");
    let boot_id = |vm: &str| sh(&env, vm, "cat /proc/sys/kernel/random/boot_id");
    let first_boot = boot_id(SRC);

    // Restore: the guest's clock stood still for the snapshot's age.
    env.ok(&["vm", "snapshot", SRC, "--name", "old"]);
    std::thread::sleep(std::time::Duration::from_secs(12));
    let t0 = Instant::now();
    env.ok(&["vm", "restore", SRC, "old"]);
    eprintln!("FIGURE restore: {} ms", t0.elapsed().as_millis());
    let skew = clock_skew(&env, SRC);
    eprintln!("FIGURE restore clock skew: {skew} s");
    assert!(
        skew.abs() <= 3,
        "a vm restored from a 12 s old snapshot is {skew} s off the host's clock"
    );
    assert_eq!(sh(&env, SRC, "hostname").trim(), SRC);
    assert_eq!(guest_addresses(&env, SRC), [ip_of(&env, SRC)]);
    let restored_boot = boot_id(SRC);
    assert_ne!(restored_boot, first_boot, "a restore is a new boot");
    assert_eq!(restored_boot.trim().len(), 36, "{restored_boot:?}");

    // Two forks.
    let t0 = Instant::now();
    let out = env.ok(&["vm", "fork", SRC, "--count", "2", "--prefix", "twin"]);
    eprintln!("FIGURE fork --count 2: {} ms", t0.elapsed().as_millis());
    assert_eq!(out.lines().collect::<Vec<_>>(), ["twin-1", "twin-2"]);
    let random = |vm: &str| sh(&env, vm, "head -c 16 /dev/urandom | od -x");
    let (r1, r2) = (random("twin-1"), random("twin-2"));
    assert_ne!(r1, r2, "two forks read the same random bytes");
    let boots = [boot_id("twin-1"), boot_id("twin-2"), boot_id(SRC)];
    assert!(
        boots[0] != boots[1] && boots[0] != boots[2] && boots[1] != boots[2],
        "forks and their source share a boot id: {boots:?}"
    );
    for f in ["twin-1", "twin-2"] {
        assert_eq!(sh(&env, f, "hostname").trim(), f, "{f}'s hostname");
        let leased = ip_of(&env, f);
        assert!(leased.starts_with("172.30.0."), "{f}: {leased}");
        assert_eq!(
            guest_addresses(&env, f),
            [leased.as_str()],
            "{f} has the address the host leased it, and only that"
        );
        let mac = sh(&env, f, "cat /sys/class/net/eth0/address");
        assert_ne!(mac, src_mac, "{f} kept the source's MAC");
        let skew = clock_skew(&env, f);
        assert!(skew.abs() <= 3, "{f} is {skew} s off the host's clock");
    }
    assert_ne!(ip_of(&env, "twin-1"), ip_of(&env, "twin-2"));
    assert_ne!(
        sh(&env, "twin-1", "cat /sys/class/net/eth0/address"),
        sh(&env, "twin-2", "cat /sys/class/net/eth0/address")
    );

    // By name on the bridge: each fork, the other and the source.
    for (from, to) in [("twin-1", "twin-2"), ("twin-2", "twin-1"), ("twin-1", SRC)] {
        let ping = env.ok(&["vm", "exec", from, "--", "ping", "-c", "1", "-W", "5", to]);
        assert!(
            ping.contains(&format!("({})", ip_of(&env, to))) && ping.contains("1 packets received"),
            "{from} cannot reach {to} by name: {ping}"
        );
    }
    env.ok(&["vm", "delete", "twin-1", "twin-2", SRC]);
}

#[test]
fn restored_and_forked_debian_guests_serve_new_sshd_host_keys() {
    if skip_unless_root_with("building the debian image", &["mmdebstrap", "ssh"]) {
        return;
    }
    let env = Env::new("network = \"none\"\ndefault_memory_mib = 512\n");
    let _permit = boot_permit();
    env.ok(&["vm", "create", "--name", "keyed", "--image", "debian"]);
    let key = |vm: &str| {
        env.ok(&[
            "vm",
            "exec",
            vm,
            "--",
            "cat",
            "/etc/ssh/ssh_host_ed25519_key.pub",
        ])
    };
    // Pins the first key (`vm/ssh.rs`).
    assert_eq!(env.ok(&["vm", "ssh", "keyed", "--", "hostname"]), "keyed\n");
    let first = key("keyed");
    env.ok(&["vm", "snapshot", "keyed", "--name", "s"]);
    env.ok(&["vm", "restore", "keyed", "s"]);
    let restored = key("keyed");
    assert_ne!(first, restored, "a restore keeps the snapshot's host key");
    assert_eq!(
        env.ok(&["vm", "ssh", "keyed", "--", "hostname"]),
        "keyed\n",
        "ssh checks the new key strictly once it is pinned again"
    );
    let out = env.ok(&["vm", "fork", "keyed", "--count", "2", "--prefix", "kf"]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["kf-1", "kf-2"]);
    let (k1, k2) = (key("kf-1"), key("kf-2"));
    assert!(
        k1 != k2 && k1 != restored && k2 != restored,
        "forks share a host key: {k1} {k2} {restored}"
    );
    for f in ["kf-1", "kf-2"] {
        assert_eq!(
            env.ok(&["vm", "ssh", f, "--", "hostname"]),
            format!("{f}\n")
        );
    }
    env.ok(&["vm", "delete", "kf-1", "kf-2", "keyed"]);
}
