//! End-to-end networking and SSH, inside a network namespace the test makes
//! (needs root; nothing reaches the host's own network): bridge-mode guests
//! with leased addresses that ping each other by name, a Debian guest (built
//! on first use) reached by ssh by name, a user-mode guest with a published
//! port and ssh through a loopback forward (also into a VM restored from a
//! warm image, with a host key of its own), ssh through the agent channel
//! when there is no route, and a teardown that leaves no tap, nft table,
//! DNS entry or lease.

use banger_e2e::{Env, boot_permit, skip_unless_root_with, wait_until};
use std::time::Duration;

/// What the bridge's dnsmasq said to an A query.
#[derive(Debug, PartialEq)]
enum Dns {
    Address(String),
    NxDomain,
    /// Nothing answered (timed out, or the port was closed).
    NoAnswer,
}

/// A DNS A query to the bridge's dnsmasq from inside the namespace. Any
/// other outcome (an answer that is none of [`Dns`], the check failing to
/// run) fails the test: a broken check never passes as "does not resolve".
fn resolve(env: &Env, name: &str) -> Dns {
    let script = r#"import socket,struct,sys
q=struct.pack(">HHHHHH",7,0x100,1,0,0,0)+b"".join(bytes([len(p)])+p.encode() for p in sys.argv[1].split("."))+b"\0"+struct.pack(">HH",1,1)
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2);s.sendto(q,(sys.argv[2],53))
try:
    r=s.recv(512)
except (TimeoutError,socket.timeout,ConnectionRefusedError):
    print("NOANSWER");sys.exit()
ident,flags,_,count=struct.unpack(">HHHH",r[:8])
assert ident==7 and flags&0x8000,f"not an answer to the query: {r!r}"
rcode=flags&0xf
if rcode==3:
    print("NXDOMAIN")
elif rcode==0 and count>0 and r[-6:-4]==b"\0\4":
    print(".".join(str(b) for b in r[-4:]))
else:
    sys.exit(f"unexpected answer: rcode {rcode}, {count} records: {r!r}")"#;
    let out = env
        .host_cmd("python3")
        .args(["-c", script, name, "172.30.0.1"])
        .output()
        .expect("run python3 for a DNS check");
    assert!(
        out.status.success(),
        "the DNS check of {name} itself failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match String::from_utf8_lossy(&out.stdout).trim() {
        "NXDOMAIN" => Dns::NxDomain,
        "NOANSWER" => Dns::NoAnswer,
        ip => Dns::Address(ip.to_string()),
    }
}

fn ip_of(env: &Env, name: &str) -> String {
    env.json(&["vm", "show", name, "--json"])["ip"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn host_taps(env: &Env) -> Vec<String> {
    let out = env.host_cmd("ip").args(["-br", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("bgtap"))
        .map(String::from)
        .collect()
}

#[test]
fn guests_get_addresses_names_nat_and_ssh_and_leave_nothing_behind() {
    if skip_unless_root_with(
        "network namespaces, taps and nftables",
        &["nft", "dnsmasq", "ssh", "mmdebstrap", "python3"],
    ) {
        return;
    }
    // Part 1, on the host (traffic on 127.0.0.1 only): user mode, no
    // privileges needed. The default image (debian) is built on first use.
    let host = Env::new("network = \"user\"\ndefault_memory_mib = 512\n");
    let _permit = boot_permit();
    let port = banger_e2e::free_port();
    let out = host.run(&[
        "vm",
        "create",
        "--name",
        "w2",
        "--publish",
        &format!("{port}:8000"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mmdebstrap"),
        "the image build shows its stages"
    );
    host.assert_ssh_works("w2");
    // A VM from a warm debian (snapshotted while its first boot may still
    // be making sshd's key), here the standby `image warm` made ahead,
    // which had a host key of its own already, serves a new one: the one
    // banger pinned for it.
    host.ok(&["image", "warm", "debian"]);
    let out = host.run(&["vm", "create", "--name", "w3", "--verbose"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("made ahead from the warm snapshot of image debian"),
        "{stderr}"
    );
    host.assert_ssh_works("w3");
    host.ok(&["vm", "delete", "w3"]);
    host.ok(&["image", "warm", "debian", "--remove"]);
    assert_eq!(
        host.ok(&["vm", "ssh", "w2", "--", "echo", "two words"]),
        "two words\n",
        "arguments keep their quoting"
    );
    let keys = host.ok(&[
        "vm",
        "exec",
        "w2",
        "--",
        "sh",
        "-c",
        "ls /etc/ssh/ssh_host_*_key",
    ]);
    assert!(
        keys.contains("ssh_host_ed25519_key"),
        "host keys are made per vm: {keys}"
    );
    // On the host, not by ssh-keygen in the guest (half a second of its CPU).
    let console = host.ok(&["vm", "logs", "w2"]);
    assert!(
        console.contains("sshd: host key made by the host"),
        "{console}"
    );
    host.assert_published("w2", 8000, port, "hello-from-guest");
    let cfg = host.ok(&["vm", "ssh-config", "w2"]);
    assert!(
        cfg.contains("Host w2") && cfg.contains("HostName 127.0.0.1"),
        "{cfg}"
    );
    // The guest's host key is pinned (read over the agent channel) and
    // checked strictly, never waved through.
    let id = host.json(&["vm", "show", "w2", "--json"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let known = std::fs::read_to_string(host.state_dir().join("vms").join(&id).join("known_hosts"))
        .unwrap();
    let guest_key = host.ok(&[
        "vm",
        "exec",
        "w2",
        "--",
        "cat",
        "/etc/ssh/ssh_host_ed25519_key.pub",
    ]);
    assert!(
        known.starts_with(&format!("banger-{id} ssh-ed25519 "))
            && known.contains(guest_key.split_whitespace().nth(1).unwrap()),
        "{known}"
    );
    assert!(
        cfg.contains("StrictHostKeyChecking yes")
            && cfg.contains(&format!("HostKeyAlias banger-{id}")),
        "{cfg}"
    );
    // No route at all: ssh still works, through the agent channel.
    host.ok(&["vm", "create", "--name", "island", "--network", "none"]);
    assert_eq!(
        host.ok(&["vm", "ssh", "island", "--", "hostname"]),
        "island\n"
    );
    host.ok(&["vm", "delete", "w2", "island"]);
    assert!(
        host.http_get(port).is_none(),
        "the forward went with the vm"
    );

    // Part 2, in a private namespace: bridge mode (root and no --network: the default).
    let env =
        Env::in_netns("default_memory_mib = 512\nallow_ip_forward = true\nbridge_idle_secs = 2\n");
    // The namespace has no way out to a mirror: bring both images in from part 1.
    host.ok(&["image", "build", "--preset", "minimal"]);
    for image in ["minimal", "debian"] {
        env.register_from(&host, image);
    }

    // Two bridge guests, leased distinct addresses, reach each other by name.
    env.ok(&["vm", "create", "--name", "a", "--image", "minimal"]);
    env.ok(&["vm", "create", "--name", "b", "--image", "minimal"]);
    let (ip_a, ip_b) = (ip_of(&env, "a"), ip_of(&env, "b"));
    assert!(
        ip_a.starts_with("172.30.0.") && ip_b.starts_with("172.30.0.") && ip_a != ip_b,
        "{ip_a} {ip_b}"
    );
    assert_eq!(
        env.json(&["vm", "show", "a", "--json"])["dns_name"],
        "a.banger"
    );
    let ping = env.ok(&[
        "vm", "exec", "a", "--", "ping", "-c", "1", "-W", "5", "b.banger",
    ]);
    assert!(
        ping.contains(&format!("({ip_b})")) && ping.contains("1 packets received"),
        "{ping}"
    );
    let ping = env.ok(&["vm", "exec", "b", "--", "ping", "-c", "1", "-W", "5", "a"]);
    assert!(
        ping.contains(&format!("({ip_a})")),
        "short names resolve through the search domain: {ping}"
    );
    // The host (here: the namespace) resolves them too, from the daemon's dnsmasq.
    assert_eq!(resolve(&env, "a.banger"), Dns::Address(ip_a.clone()));
    // NAT is in this instance's own table, named with its mark.
    let table = banger_core::net::tap_pool::default_nft_table(&env.state_dir());
    let nat = env
        .host_cmd("nft")
        .args(["list", "table", "ip", &table])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&nat.stdout).contains("masquerade"),
        "NAT is in the instance's table {table}"
    );
    // Its taps carry its owner tag: another instance with the same mark
    // (the same tap prefix) tells them from its own.
    let tag = banger_core::net::tap_pool::owner_tag(&env.state_dir());
    for tap in host_taps(&env) {
        let out = env
            .host_cmd("ip")
            .args(["link", "show", &tap])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains(&format!("alias {tag}")), "{tap}: {shown}");
    }

    // The host's own services are off limits (DNS aside): a listener on
    // the bridge address, inside this test's namespace, is unreachable for
    // a guest unless it was created with --host-access.
    let www = env.root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "host-secret\n").unwrap();
    let mut server = env
        .host_cmd("python3")
        .args(["-m", "http.server", "--bind", "172.30.0.1", "8099"])
        .current_dir(&www)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let probe = |vm: &str| env.guest_http_get(vm, "172.30.0.1", 8099);
    assert!(
        wait_until(Duration::from_secs(10), || env
            .host_cmd("python3")
            .args([
                "-c",
                "import urllib.request as u; u.urlopen('http://172.30.0.1:8099/')"
            ])
            .status()
            .is_ok_and(|s| s.success())),
        "the test's listener is up"
    );
    assert_eq!(probe("a"), None, "a guest cannot reach the host's ports");
    env.ok(&[
        "vm",
        "create",
        "--name",
        "c",
        "--image",
        "minimal",
        "--host-access",
    ]);
    let reached = probe("c");
    assert!(
        reached
            .as_deref()
            .is_some_and(|r| r.contains("host-secret")),
        "--host-access opens them: {reached:?}"
    );
    assert_eq!(probe("a"), None, "for that guest only");
    env.ok(&["vm", "delete", "c"]);
    let _ = server.kill();
    let _ = server.wait();

    // Leases: a deleted VM's address goes back; never two VMs on one address.
    env.ok(&["vm", "delete", "b"]);
    // dnsmasq sees the hosts file go through inotify, a moment later. It
    // still runs (a is on the bridge), so it must say the name is unknown.
    assert!(
        wait_until(Duration::from_secs(5), || resolve(&env, "b.banger")
            == Dns::NxDomain),
        "b's name left DNS with it: {:?}",
        resolve(&env, "b.banger")
    );
    env.ok(&["vm", "create", "--name", "c", "--image", "minimal"]);
    assert_eq!(ip_of(&env, "c"), ip_b, "the released address is reused");
    assert_ne!(ip_of(&env, "c"), ip_a);

    // ssh by name to a debian guest on the bridge.
    env.ok(&["vm", "create", "--name", "api"]);
    let out = env.run(&["vm", "ssh", "api", "--", "git", "--version"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = env.root.path().join("ssh_config");
    std::fs::write(&cfg, env.ok(&["vm", "ssh-config", "api"])).unwrap();
    let out = env
        .host_cmd("ssh")
        .args([
            "-F",
            &cfg.to_string_lossy(),
            "api.banger",
            "--",
            "echo",
            "by-name",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "by-name\n",
        "ssh api.banger: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting every VM takes their names out of DNS at once; the shared
    // side (bridge, DNS server, NAT table, idle taps) waits for another VM
    // for `bridge_idle_secs`, then leaves no tap, NAT table, DNS entry or
    // lease.
    env.ok(&["vm", "delete", "a", "c", "api"]);
    let bridge_up = || {
        env.host_cmd("ip")
            .args(["link", "show", "banger0"])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(bridge_up(), "the bridge waits for the next vm");
    assert!(
        wait_until(Duration::from_secs(15), || !bridge_up()),
        "the bridge outlived its idle spell"
    );
    assert!(
        wait_until(Duration::from_secs(5), || host_taps(&env).is_empty()),
        "taps left: {:?}",
        host_taps(&env)
    );
    let rules = env
        .host_cmd("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("table ip banger_"),
        "nat table left behind"
    );
    let hosts_dir = banger_core::net::network::public_hosts_dir(&env.state_dir());
    let hosts = std::fs::read_dir(&hosts_dir)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(hosts, 0, "dns entries left behind");
    let dnsmasq = env
        .host_cmd("pgrep")
        .args(["-x", "dnsmasq"])
        .output()
        .unwrap();
    let in_ns: Vec<String> = String::from_utf8_lossy(&dnsmasq.stdout)
        .lines()
        .filter(|pid| {
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            let ours = env
                .host_cmd("readlink")
                .arg("/proc/self/ns/net")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
            ns.map(|n| n.to_string_lossy().into_owned()) == ours
        })
        .map(String::from)
        .collect();
    assert!(
        in_ns.is_empty(),
        "dnsmasq still runs in the namespace: {in_ns:?}"
    );
    assert_eq!(
        env.json(&["vm", "list", "--json"]),
        serde_json::json!([]),
        "no leases: no rows"
    );
    // The names dir outlives the daemon's VMs; this instance is done with it.
    let _ = std::fs::remove_dir_all(&hosts_dir);
}
