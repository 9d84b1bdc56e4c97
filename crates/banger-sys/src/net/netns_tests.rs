//! Privileged tests of the real kernel objects and programs, each inside a
//! network namespace the test creates (`ip netns add`) and deletes again.
//!
//! The code under test runs on a thread that entered that namespace
//! (`setns`), so its netlink socket, `/dev/net/tun` file, `/proc/sys/net`
//! view and spawned programs (`nft`, `dnsmasq`) all act there; the host's
//! interfaces, rules and sysctls are never touched, and the only traffic is
//! DNS and one TCP connection between addresses inside the namespaces.
//! Without root (or without `ip`, `nft`, `dnsmasq`, `qemu-system-x86_64`)
//! each test prints `SKIPPED: …` and passes, unless `BANGER_E2E_REQUIRED=1`
//! (as CI sets) makes it fail.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Ipv4Cidr;
use super::dnsmasq::{self, DnsmasqConfig};
use super::link::{LinkError, Links, NetlinkLinks};
use super::nft::{self, NatStatus, Nft};
use super::tap::{self, TapError, TapOptions};
use crate::command::{Cmd, Output, Runner, SystemRunner, which};

const BRIDGE: &str = "bgtest0";

fn bridge_addr() -> Ipv4Cidr {
    "172.31.99.1/24".parse().unwrap()
}

/// A named network namespace that lives as long as the value.
struct TestNetns {
    name: String,
}

impl TestNetns {
    /// A fresh namespace, or `None` (after printing why) when this test
    /// cannot run here.
    fn create(tag: &str, programs: &[&str]) -> Option<TestNetns> {
        if crate::process::euid() != 0 {
            return skip("needs root");
        }
        for program in std::iter::once(&"ip").chain(programs) {
            if which(program).is_none() {
                let hint = crate::command::install_hint(program);
                return skip(&format!("needs {program} ({hint})"));
            }
        }
        let name = format!("bgtest-{}-{tag}", std::process::id());
        let _ = SystemRunner.run(&Cmd::new("ip").args(["netns", "del", &name]));
        SystemRunner
            .run(&Cmd::new("ip").args(["netns", "add", &name]))
            .expect("ip netns add");
        Some(TestNetns { name })
    }

    /// Runs `f` on a thread inside the namespace; a panic in `f` fails the
    /// test after the thread's guards have cleaned up.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter(&path);
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs a program inside the namespace (`ip netns exec`), for checks
    /// made independently of the code under test.
    fn exec(&self, args: &[&str]) -> Output {
        let mut cmd = Cmd::new("ip").args(["netns", "exec", &self.name]);
        cmd = cmd.args(args);
        SystemRunner
            .run(&cmd)
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }
}

/// Prints why a test cannot run here, or fails it where the suite must
/// run in full (`BANGER_E2E_REQUIRED=1`, as CI sets).
fn skip(why: &str) -> Option<TestNetns> {
    crate::skip_test(why);
    None
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = SystemRunner.run(&Cmd::new("ip").args(["netns", "del", &self.name]));
    }
}

/// Moves the calling thread into the namespace at `path`, and proves it
/// left the process's own before anything runs.
fn enter(path: &Path) {
    let ns = std::fs::File::open(path).expect("open netns");
    rustix::thread::move_into_link_name_space(
        ns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("setns");
    let mine = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let process = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        mine, process,
        "the test thread must not be in the host namespace"
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bring_up_bridge(links: &NetlinkLinks) {
    links.set_up("lo").unwrap();
    links.ensure_bridge(BRIDGE).unwrap();
    links.ensure_ipv4(BRIDGE, bridge_addr()).unwrap();
    links.set_up(BRIDGE).unwrap();
}

#[test]
fn bridge_and_taps_are_created_attached_listed_and_deleted() {
    let Some(ns) = TestNetns::create("links", &[]) else {
        return;
    };
    let timings = ns.run(|| {
        let links = NetlinkLinks::new().unwrap();
        // Twice: both are idempotent.
        bring_up_bridge(&links);
        bring_up_bridge(&links);
        assert_eq!(links.ipv4_addresses(BRIDGE).unwrap(), [bridge_addr()]);
        let bridge = links.get(BRIDGE).unwrap().unwrap();
        assert_eq!(bridge.kind.as_deref(), Some("bridge"));
        assert!(bridge.up);

        let started = Instant::now();
        tap::create_tap("bgtap0", &TapOptions::default()).unwrap();
        let create = started.elapsed();
        tap::create_tap(
            "bgtap1",
            &TapOptions {
                owner: Some(1000),
                group: None,
            },
        )
        .unwrap();
        tap::create_tap("bgtap1", &TapOptions::default()).unwrap(); // adopts the idle tap
        for t in ["bgtap0", "bgtap1"] {
            links.attach(t, BRIDGE).unwrap();
            links.set_up(t).unwrap();
        }

        let listed = links.list("bgtap").unwrap();
        let names: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["bgtap0", "bgtap1"]);
        for l in &listed {
            assert_eq!(l.kind.as_deref(), Some("tun"), "{l:?}");
            assert_eq!(l.master.as_deref(), Some(BRIDGE), "{l:?}");
            assert!(l.up, "{l:?}");
        }
        assert_eq!(
            links.get("bgtap0").unwrap().unwrap().master.as_deref(),
            Some(BRIDGE)
        );

        links.detach("bgtap1").unwrap();
        assert_eq!(links.get("bgtap1").unwrap().unwrap().master, None);

        let started = Instant::now();
        tap::delete_tap("bgtap0").unwrap();
        let delete_ioctl = started.elapsed();
        // The kernel unregisters the device after the last close returns
        // (seen still listed once, on a loaded CI host): wait for that.
        let deadline = Instant::now() + Duration::from_secs(2);
        while links.exists("bgtap0").unwrap() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!links.exists("bgtap0").unwrap(), "bgtap0 is gone");
        tap::delete_tap("bgtap0").unwrap(); // idempotent

        let started = Instant::now();
        assert!(links.delete("bgtap1").unwrap());
        let delete_netlink = started.elapsed();
        assert!(!links.delete("bgtap1").unwrap());
        assert!(
            links.list("bgtap").unwrap().is_empty(),
            "nothing left behind"
        );

        // Names of other kinds are refused with a clear error.
        let err = tap::create_tap(BRIDGE, &TapOptions::default()).unwrap_err();
        assert!(matches!(err, TapError::NotATap { .. }), "{err:?}");
        tap::create_tap("bgtap2", &TapOptions::default()).unwrap();
        let err = links.ensure_bridge("bgtap2").unwrap_err();
        assert!(matches!(err, LinkError::WrongKind { .. }), "{err:?}");
        let err = links.attach("bgtap2", "bgnothere0").unwrap_err();
        assert!(matches!(err, LinkError::NotFound { .. }), "{err:?}");
        (create, delete_ioctl, delete_netlink)
    });
    // Independent check with iproute2: what is left is a persistent tap.
    let detail = ns
        .exec(&["ip", "-d", "link", "show", "bgtap2"])
        .stdout_lossy();
    assert!(
        detail.contains("tun type tap") && detail.contains("persist on"),
        "{detail}"
    );
    assert!(detail.contains("vnet_hdr on"), "{detail}");
    println!(
        "tap create {:.2} ms, delete by ioctl {:.2} ms, delete by netlink {:.2} ms",
        ms(timings.0),
        ms(timings.1),
        ms(timings.2)
    );
}

#[test]
fn links_are_read_in_the_namespace_they_were_opened_in() {
    let Some(ns) = TestNetns::create("read", &[]) else {
        return;
    };
    ns.run(|| {
        let links = NetlinkLinks::new().unwrap();
        let lo = links
            .get("lo")
            .unwrap()
            .expect("lo exists in every namespace");
        assert_eq!(
            (lo.name.as_str(), lo.kind.as_deref(), lo.up),
            ("lo", None, false)
        );
        assert!(!links.exists("bgnotthere0").unwrap());
        // A fresh namespace has loopback and nothing else.
        let all = links.list("").unwrap();
        assert_eq!(
            all.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["lo"]
        );
    });
}

/// The tap is what QEMU expects: it opens it by name with banger's
/// `-netdev` options; while it holds it the ioctl delete refuses, and the
/// netlink delete removes it anyway.
#[test]
fn qemu_opens_the_tap_and_a_held_tap_is_deleted_over_netlink() {
    let Some(ns) = TestNetns::create("qemu", &["qemu-system-x86_64"]) else {
        return;
    };
    ns.run(|| {
        tap::create_tap("bgtap0", &TapOptions::default()).unwrap();
        let mut qemu = std::process::Command::new("qemu-system-x86_64")
            .args(["-M", "none", "-nodefaults", "-display", "none", "-netdev"])
            .arg("tap,id=net0,ifname=bgtap0,script=no,downscript=no,vhost=off")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let holds_tap = |pid: u32| {
            std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("iff:\tbgtap0"))
                })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !holds_tap(qemu.id()) {
            let exited = qemu.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "qemu never opened bgtap0"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let busy = tap::delete_tap("bgtap0");
        let deleted = NetlinkLinks::new().unwrap().delete("bgtap0");
        let _ = qemu.kill();
        let _ = qemu.wait();
        let err = busy.unwrap_err();
        assert!(matches!(err, TapError::Busy { .. }), "{err:?}");
        assert!(deleted.unwrap(), "RTM_DELLINK removes a tap in use");
        assert!(!NetlinkLinks::new().unwrap().exists("bgtap0").unwrap());
    });
}

#[test]
fn tap_create_and_delete_timings() {
    let Some(ns) = TestNetns::create("taptime", &[]) else {
        return;
    };
    let (create, delete) = ns.run(|| {
        let n = 20;
        let started = Instant::now();
        for i in 0..n {
            tap::create_tap(&format!("bgtime{i}"), &TapOptions::default()).unwrap();
        }
        let create = started.elapsed() / n;
        let started = Instant::now();
        for i in 0..n {
            tap::delete_tap(&format!("bgtime{i}")).unwrap();
        }
        let delete = started.elapsed() / n;
        assert!(
            NetlinkLinks::new()
                .unwrap()
                .list("bgtime")
                .unwrap()
                .is_empty()
        );
        (create, delete)
    });
    println!(
        "tap create {:.3} ms, delete {:.2} ms (mean of 20)",
        ms(create),
        ms(delete)
    );
}

#[test]
fn nat_table_is_idempotent_and_leaves_other_tables_alone() {
    let Some(ns) = TestNetns::create("nft", &["nft"]) else {
        return;
    };
    let table = "banger_test";
    let host_forwarding = nft::ipv4_forwarding().unwrap();
    let (ensure, listing) = ns.run(|| {
        let runner = SystemRunner;
        runner
            .run(&Cmd::new("nft").args(["-f", "-"]).stdin(
                "table ip foreign {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tcounter\n\t}\n}\n",
            ))
            .unwrap();
        let nft = Nft::new(&runner);
        assert_eq!(nft.status(table).unwrap(), NatStatus::Absent);
        let started = Instant::now();
        nft.ensure_nat(table, bridge_addr(), BRIDGE).unwrap();
        let ensure = started.elapsed();
        nft.ensure_nat(table, bridge_addr(), BRIDGE).unwrap();
        let NatStatus::Present { listing } = nft.status(table).unwrap() else {
            panic!("table missing after ensure_nat")
        };

        // IPv4 forwarding is per namespace: switching it here leaves the
        // host's as it was.
        nft::set_ipv4_forwarding(true).unwrap();
        assert!(nft::ipv4_forwarding().unwrap());
        (ensure, listing)
    });
    assert_eq!(nft::ipv4_forwarding().unwrap(), host_forwarding);
    assert_eq!(
        ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .stdout_lossy()
            .trim(),
        "1"
    );

    // Checked with nft itself, from outside the code under test.
    let listed = ns
        .exec(&["nft", "list", "table", "ip", table])
        .stdout_lossy();
    assert_eq!(listed, listing);
    assert!(
        listed
            .contains("ip saddr 172.31.99.0/24 ip daddr != 172.31.99.0/24 oifname != \"bgtest0\"")
            && listed.contains("masquerade"),
        "{listed}"
    );
    assert_eq!(
        listed.matches("masquerade").count(),
        1,
        "ensure twice adds one rule: {listed}"
    );
    let tables = ns.exec(&["nft", "list", "tables"]).stdout_lossy();
    assert_eq!(
        tables.matches(&format!("table ip {table}")).count(),
        1,
        "{tables}"
    );

    ns.run(|| {
        let nft = Nft::new(&SystemRunner);
        nft.remove_nat(table).unwrap();
        nft.remove_nat(table).unwrap(); // idempotent
        assert_eq!(nft.status(table).unwrap(), NatStatus::Absent);
    });
    let ruleset = ns.exec(&["nft", "list", "ruleset"]).stdout_lossy();
    assert!(!ruleset.contains(table), "{ruleset}");
    assert!(
        ruleset.contains("table ip foreign") && ruleset.contains("chain input"),
        "the foreign table survives untouched: {ruleset}"
    );
    println!("nft ensure_nat {:.1} ms", ms(ensure));
}

/// Three namespaces wired like a host: `guest` (172.31.99.5) behind the
/// bridge in `host`, which reaches `outside` over a veth (198.18.0.0/30,
/// the benchmarking range, inside namespaces only). A TCP connection from
/// guest to outside must arrive from the host's outside address.
#[test]
fn masquerade_rewrites_guest_traffic_leaving_the_bridge() {
    let Some(host) = TestNetns::create("nat-host", &["nft"]) else {
        return;
    };
    let guest = TestNetns::create("nat-guest", &[]).unwrap();
    let outside = TestNetns::create("nat-out", &[]).unwrap();
    let ip = |ns: &TestNetns, args: &str| {
        let mut argv = vec!["ip"];
        argv.extend(args.split_whitespace());
        ns.exec(&argv);
    };
    host.run(|| {
        let links = NetlinkLinks::new().unwrap();
        bring_up_bridge(&links);
        Nft::new(&SystemRunner)
            .ensure_nat(nft::DEFAULT_TABLE, bridge_addr(), BRIDGE)
            .unwrap();
        nft::set_ipv4_forwarding(true).unwrap();
    });
    let (g, o) = (&guest.name, &outside.name);
    ip(
        &host,
        &format!("link add bgveth-g type veth peer name eth0 netns {g}"),
    );
    ip(
        &host,
        &format!("link add bgveth-o type veth peer name eth0 netns {o}"),
    );
    ip(&host, "link set bgveth-g master bgtest0 up");
    ip(&host, "addr add 198.18.0.1/30 dev bgveth-o");
    ip(&host, "link set bgveth-o up");
    ip(&guest, "addr add 172.31.99.5/24 dev eth0");
    ip(&guest, "link set eth0 up");
    ip(&guest, "route add default via 172.31.99.1");
    ip(&outside, "addr add 198.18.0.2/30 dev eth0");
    ip(&outside, "link set eth0 up");
    ip(&outside, "link set lo up");

    let listener = outside.run(|| std::net::TcpListener::bind("198.18.0.2:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let peer = std::thread::scope(|scope| {
        let accepted = scope.spawn(|| {
            listener.set_nonblocking(false).unwrap();
            listener.accept().map(|(_, peer)| peer)
        });
        guest.run(|| {
            let target = SocketAddr::from(([198, 18, 0, 2], port));
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))
                .expect("guest reaches outside through the host's NAT")
        });
        accepted.join().unwrap().unwrap()
    });
    assert_eq!(
        peer.ip(),
        Ipv4Addr::new(198, 18, 0, 1),
        "source was masqueraded"
    );
    let listing = host
        .exec(&["nft", "list", "table", "ip", nft::DEFAULT_TABLE])
        .stdout_lossy();
    assert!(
        !listing.contains("packets 0 bytes 0 masquerade"),
        "{listing}"
    );
}

/// A DNS A query for `name`, built by hand: 12-byte header (id, RD flag,
/// one question), the name as length-prefixed labels, type A, class IN.
fn build_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The rcode and A records of a reply to query `id`.
fn parse_reply(id: u16, reply: &[u8]) -> Option<(u8, Vec<Ipv4Addr>)> {
    if reply.len() < 12 || reply[..2] != id.to_be_bytes() || reply[2] & 0x80 == 0 {
        return None;
    }
    let rcode = reply[3] & 0x0f;
    let questions = u16::from_be_bytes([reply[4], reply[5]]);
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    let skip_name = |mut at: usize| -> Option<usize> {
        loop {
            let len = *reply.get(at)? as usize;
            if len & 0xc0 == 0xc0 {
                return Some(at + 2); // compression pointer ends the name
            }
            at += 1 + len;
            if len == 0 {
                return Some(at);
            }
        }
    };
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(at)? + 4;
    }
    let mut ips = Vec::new();
    for _ in 0..answers {
        at = skip_name(at)?;
        let field = |i: usize| u16::from_be_bytes([reply[at + i], reply[at + i + 1]]);
        if reply.len() < at + 10 {
            return None;
        }
        let (rtype, rdlen) = (field(0), field(8) as usize);
        let data = reply.get(at + 10..at + 10 + rdlen)?;
        if rtype == 1 && rdlen == 4 {
            ips.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + rdlen;
    }
    Some((rcode, ips))
}

/// Asks `server` for `name`'s A records: 3 tries, 300 ms each.
fn resolve(server: Ipv4Addr, name: &str) -> io::Result<(u8, Vec<Ipv4Addr>)> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(300)))?;
    socket.connect((server, 53))?;
    let mut buf = [0u8; 512];
    for attempt in 0..3u16 {
        let id = 0x4242 + attempt;
        socket.send(&build_query(id, name))?;
        match socket.recv(&mut buf) {
            Ok(n) => {
                if let Some(answer) = parse_reply(id, &buf[..n]) {
                    return Ok(answer);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer for {name}"),
    ))
}

const NOERROR: u8 = 0;
const NXDOMAIN: u8 = 3;

/// Polls until `name` resolves as `want`, for at most 3 s.
fn wait_for(server: Ipv4Addr, name: &str, want: &(u8, Vec<Ipv4Addr>)) {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(3) {
        let got = resolve(server, name).unwrap();
        if &got == want {
            return;
        }
        last = Some(got);
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("{name}: wanted {want:?}, still {last:?} after 3 s");
}

/// Stops dnsmasq even when an assertion fails, before the namespace goes.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = dnsmasq::stop(&self.0, Duration::from_secs(1));
    }
}

#[test]
fn dnsmasq_serves_host_entries_and_follows_changes_without_restart() {
    let Some(ns) = TestNetns::create("dns", &["dnsmasq"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // dnsmasq reads the hosts dir after dropping root: its parents must be
    // traversable, as /var/lib/banger is.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let hosts = dir.path().join("dns");
    let config = DnsmasqConfig::new(bridge_addr().addr(), dir.path(), &hosts);
    let server = bridge_addr().addr();
    let web = Ipv4Addr::new(172, 31, 99, 5);
    let moved = Ipv4Addr::new(172, 31, 99, 6);

    let (pid, start, update, removal) = ns.run(|| {
        bring_up_bridge(&NetlinkLinks::new().unwrap());
        dnsmasq::prepare_hosts_dir(&hosts).unwrap();
        dnsmasq::write_host_entry(&hosts, "web", web).unwrap();

        let started = Instant::now();
        let pid = dnsmasq::start(&config).unwrap();
        let start = started.elapsed();
        let _stop = StopOnDrop(config.pid_file.clone());
        assert_eq!(dnsmasq::running(&config.pid_file), Some(pid));
        assert!(matches!(
            dnsmasq::start(&config),
            Err(dnsmasq::DnsmasqError::AlreadyRunning { .. })
        ));

        assert_eq!(resolve(server, "web.banger").unwrap(), (NOERROR, vec![web]));
        assert_eq!(resolve(server, "web").unwrap(), (NOERROR, vec![web]));
        assert_eq!(resolve(server, "db.banger").unwrap(), (NXDOMAIN, vec![]));

        // Timed from the write to the first query that sees it.
        let started = Instant::now();
        dnsmasq::write_host_entry(&hosts, "web", moved).unwrap();
        wait_for(server, "web.banger", &(NOERROR, vec![moved]));
        let update = started.elapsed();
        assert_eq!(dnsmasq::running(&config.pid_file), Some(pid), "no restart");

        let started = Instant::now();
        dnsmasq::remove_host_entry(&hosts, "web").unwrap();
        wait_for(server, "web.banger", &(NXDOMAIN, vec![]));
        let removal = started.elapsed();

        assert!(dnsmasq::stop(&config.pid_file, Duration::from_secs(2)).unwrap());
        (pid, start, update, removal)
    });
    assert!(!crate::process::alive(pid), "dnsmasq {pid} is gone");
    assert_eq!(dnsmasq::running(&config.pid_file), None);
    assert!(!config.pid_file.exists());
    println!(
        "dnsmasq start {:.1} ms, name update visible after {:.2} ms, removal after {:.2} ms",
        ms(start),
        ms(update),
        ms(removal)
    );
}

#[test]
fn dnsmasq_start_failure_reports_its_log() {
    let Some(ns) = TestNetns::create("dnsfail", &["dnsmasq"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let first = DnsmasqConfig::new(
        bridge_addr().addr(),
        &dir.path().join("a"),
        &dir.path().join("dns"),
    );
    let second = DnsmasqConfig::new(
        bridge_addr().addr(),
        &dir.path().join("b"),
        &dir.path().join("dns"),
    );
    let err = ns.run(|| {
        bring_up_bridge(&NetlinkLinks::new().unwrap());
        dnsmasq::start(&first).unwrap();
        let _stop = StopOnDrop(first.pid_file.clone());
        // Port 53 on that address is taken by the first one.
        let err = dnsmasq::start(&second).unwrap_err();
        assert_eq!(dnsmasq::running(&second.pid_file), None);
        err
    });
    assert!(
        matches!(err, dnsmasq::DnsmasqError::EarlyExit { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("dnsmasq exited during start-up") && text.contains("172.31.99.1"),
        "{text}"
    );
    println!("{text}");
}

#[test]
fn dns_query_encoding_round_trips() {
    let q = build_query(7, "web.banger");
    assert_eq!(&q[12..], b"\x03web\x06banger\x00\x00\x01\x00\x01");
    // A reply: the question echoed, one answer through a name pointer.
    let mut reply = q.clone();
    reply[2] = 0x85;
    reply[3] = 0x80;
    reply[7] = 1;
    reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 172, 31, 99, 5]);
    assert_eq!(
        parse_reply(7, &reply),
        Some((0, vec![Ipv4Addr::new(172, 31, 99, 5)]))
    );
    assert_eq!(parse_reply(8, &reply), None, "another query's reply");
}

/// Without privileges nothing can change, and each refusal says what to do.
/// As root (where trying would touch the host's own namespace), the test
/// runs itself again as `nobody`, with no capabilities.
#[test]
fn unprivileged_callers_are_told_what_to_do() {
    if crate::process::euid() == 0 {
        rerun_as_nobody("unprivileged_callers_are_told_what_to_do");
        return;
    }
    let hint = "needs CAP_NET_ADMIN: run bangerd as root or use --network user";
    let err = tap::create_tap("bgtest-unpriv", &TapOptions::default()).unwrap_err();
    assert!(err.to_string().ends_with(hint), "{err}");
    let err = NetlinkLinks::new()
        .unwrap()
        .ensure_bridge("bgtest-unpriv")
        .unwrap_err();
    assert!(err.to_string().ends_with(hint), "{err}");
    if which("nft").is_none() {
        crate::skip_test("the nft refusal needs nft (apt-get install nftables)");
        return;
    }
    let err = Nft::new(&SystemRunner)
        .ensure_nat("banger_unpriv", bridge_addr(), BRIDGE)
        .unwrap_err();
    assert!(err.to_string().ends_with(hint), "{err}");
}

/// Runs test `name` of this module again, in this test binary, as uid and
/// gid 65534 with no groups (`setpriv` drops every capability with uid 0),
/// and fails unless it ran and passed there.
fn rerun_as_nobody(name: &str) {
    if which("setpriv").is_none() {
        crate::skip_test("running a test unprivileged needs setpriv (apt-get install util-linux)");
        return;
    }
    let test = format!(
        "{}::{name}",
        module_path!().split_once("::").expect("a crate path").1
    );
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args(["--exact", &test, "--test-threads=1", "--nocapture"])
        .output()
        .expect("run setpriv");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{test} as uid 65534 ({}):\n{text}",
        out.status
    );
}
