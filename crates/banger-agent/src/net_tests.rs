//! Unit tests of `net.rs` (parsing, files, link lookup, the configuration
//! sequence against a fake), and one test against the real kernel in a
//! network namespace of its own, which needs root and skips without it.

use std::cell::RefCell;
use std::io::Read;
use std::process::{Command, Stdio};

use super::*;

fn network() -> GuestNetwork {
    GuestNetwork {
        mac: "52:54:00:aa:bb:cc".into(),
        address: "172.30.0.5/24".into(),
        gateway: Some("172.30.0.1".into()),
        dns: vec!["172.30.0.1".into(), "9.9.9.9".into()],
        search: Some("banger".into()),
    }
}

/// A fake `/sys/class/net` with the given `(name, mac, ifindex)` links.
fn sys_with(links: &[(&str, &str, u32)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, mac, index) in links {
        add_link(dir.path(), name, mac, *index);
    }
    dir
}

fn add_link(sys: &Path, name: &str, mac: &str, index: u32) {
    let link = sys.join(name);
    std::fs::create_dir_all(&link).unwrap();
    std::fs::write(link.join("address"), format!("{mac}\n")).unwrap();
    std::fs::write(link.join("ifindex"), format!("{index}\n")).unwrap();
}

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Up(u32),
    Address(u32, Ipv4Cidr),
    Route(u32, Ipv4Addr, bool),
    Mac(u32, [u8; 6]),
    Down(u32),
    DelAddress(u32, Ipv4Cidr),
    ArpNotify(String),
}

/// Records what the configuration asked of the kernel.
#[derive(Default)]
struct FakeRtnl {
    calls: RefCell<Vec<Call>>,
}

impl Rtnl for FakeRtnl {
    fn link_up(&mut self, index: u32) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Up(index));
        Ok(())
    }
    fn add_address(&mut self, index: u32, cidr: Ipv4Cidr) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Address(index, cidr));
        Ok(())
    }
    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr, onlink: bool) -> io::Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::Route(index, gateway, onlink));
        Ok(())
    }
    fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Mac(index, mac));
        Ok(())
    }
    fn link_down(&mut self, index: u32) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::Down(index));
        Ok(())
    }
    fn del_address(&mut self, index: u32, cidr: Ipv4Cidr) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::DelAddress(index, cidr));
        Ok(())
    }
    fn arp_notify(&mut self, name: &str) -> io::Result<()> {
        self.calls.borrow_mut().push(Call::ArpNotify(name.into()));
        Ok(())
    }
}

#[test]
fn a_mac_parses_from_six_hex_bytes_only() {
    assert_eq!(
        parse_mac("52:54:00:AA:bb:0c").unwrap(),
        [0x52, 0x54, 0, 0xaa, 0xbb, 0x0c]
    );
    for bad in [
        "52:54:00:aa:bb",
        "52:54:00:aa:bb:cc:dd",
        "52:54:00:aa:bb:c",
        "zz:54:00:aa:bb:cc",
    ] {
        assert!(
            matches!(parse_mac(bad), Err(NetError::BadMac { .. })),
            "{bad}"
        );
    }
}

#[test]
fn a_restored_link_gets_the_new_mac_and_address_and_loses_the_old() {
    let sys = sys_with(&[
        ("lo", "00:00:00:00:00:00", 1),
        ("eth0", "52:54:00:11:22:33", 2),
    ]);
    let root = tempfile::tempdir().unwrap();
    let old = GuestNetwork {
        mac: "52:54:00:11:22:33".into(),
        address: "172.30.0.9/24".into(),
        ..network()
    };
    let mut rtnl = FakeRtnl::default();
    reconfigure(&mut rtnl, sys.path(), root.path(), Some(&old), &network()).unwrap();
    assert_eq!(
        rtnl.calls.into_inner(),
        // Down first and up last: the link announces the new address
        // from the new MAC, never the old address from the new MAC.
        vec![
            Call::ArpNotify("eth0".into()),
            Call::Down(2),
            Call::DelAddress(2, cidr("172.30.0.9/24")),
            Call::Mac(2, [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]),
            Call::Address(2, cidr("172.30.0.5/24")),
            Call::Up(2),
            Call::Route(2, Ipv4Addr::new(172, 30, 0, 1), false),
        ]
    );
    assert!(
        std::fs::read_to_string(root.path().join("etc/resolv.conf"))
            .unwrap()
            .contains("nameserver 172.30.0.1")
    );
}

#[test]
fn reconfiguring_to_the_same_network_removes_nothing() {
    let sys = sys_with(&[("eth0", "52:54:00:aa:bb:cc", 2)]);
    let root = tempfile::tempdir().unwrap();
    let mut rtnl = FakeRtnl::default();
    reconfigure(
        &mut rtnl,
        sys.path(),
        root.path(),
        Some(&network()),
        &network(),
    )
    .unwrap();
    let calls = rtnl.calls.into_inner();
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Mac(..) | Call::DelAddress(..))),
        "{calls:?}"
    );
    assert!(calls.contains(&Call::Address(2, cidr("172.30.0.5/24"))));
    // A new engine (and a new passt) has not seen the guest yet.
    assert_eq!(
        calls.last(),
        Some(&Call::Route(2, "172.30.0.1".parse().unwrap(), false))
    );
    assert!(calls.contains(&Call::Up(2)), "announced again: {calls:?}");
}

#[test]
fn reconfiguring_without_the_old_link_is_an_error_naming_its_mac() {
    let sys = sys_with(&[("lo", "00:00:00:00:00:00", 1)]);
    let root = tempfile::tempdir().unwrap();
    let err = reconfigure(
        &mut FakeRtnl::default(),
        sys.path(),
        root.path(),
        None,
        &network(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("52:54:00:aa:bb:cc"), "{err}");
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

#[test]
fn the_broadcast_is_the_one_ip_addr_add_picks() {
    assert_eq!(
        broadcast(cidr("172.30.0.5/24")),
        Some(Ipv4Addr::new(172, 30, 0, 255))
    );
    assert_eq!(broadcast(cidr("10.0.0.2/31")), None);
    assert_eq!(broadcast(cidr("10.0.0.2/32")), None);
}

#[test]
fn resolv_conf_lists_nameservers_then_the_search_domain() {
    assert_eq!(
        resolv_conf(&network()),
        "# written by banger-agent at boot\nnameserver 172.30.0.1\nnameserver 9.9.9.9\nsearch banger\n"
    );
    let bare = GuestNetwork {
        dns: vec![" ".into()],
        search: Some("".into()),
        ..network()
    };
    assert_eq!(resolv_conf(&bare), "# written by banger-agent at boot\n");
}

#[test]
fn resolv_conf_replaces_a_dangling_symlink() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let link = root.path().join("etc/resolv.conf");
    std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", &link).unwrap();
    write_resolv_conf(root.path(), &network()).unwrap();
    assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(
        std::fs::read_to_string(&link)
            .unwrap()
            .contains("nameserver 172.30.0.1\n")
    );
}

#[test]
fn resolv_conf_that_says_so_already_is_not_rewritten_but_a_symlink_to_it_is_replaced() {
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let path = etc.join("resolv.conf");
    write_resolv_conf(root.path(), &network()).unwrap();
    let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(&path).unwrap());
    let first = inode();
    write_resolv_conf(root.path(), &network()).unwrap();
    assert_eq!(inode(), first, "the same text is left in place");
    let mut other = network();
    other.dns = vec!["10.0.0.1".into()];
    write_resolv_conf(root.path(), &other).unwrap();
    assert_eq!(inode(), first, "new text is written over the old");
    // Shorter than the first: nothing of that is left.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), resolv_conf(&other));
    write_resolv_conf(root.path(), &network()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        resolv_conf(&network()),
        "and back"
    );

    // A symlink to a file with the same text still becomes a file of its own.
    std::fs::write(etc.join("elsewhere"), resolv_conf(&other)).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("elsewhere", &path).unwrap();
    write_resolv_conf(root.path(), &other).unwrap();
    assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
}

#[test]
fn the_link_is_chosen_by_mac_in_any_case() {
    let sys = sys_with(&[
        ("lo", "00:00:00:00:00:00", 1),
        ("eth0", "52:54:00:11:22:33", 2),
        ("eth1", "52:54:00:aa:bb:cc", 3),
    ]);
    assert_eq!(
        find_link(sys.path(), "52:54:00:AA:BB:CC"),
        Some(Link {
            name: "eth1".into(),
            index: 3
        })
    );
    assert_eq!(find_link(sys.path(), "52:54:00:00:00:01"), None);
}

#[test]
fn waiting_finds_a_link_that_appears_late() {
    let sys = sys_with(&[("lo", "00:00:00:00:00:00", 1)]);
    let path = sys.path().to_path_buf();
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        add_link(&path, "eth0", "52:54:00:aa:bb:cc", 2);
    });
    let link = wait_for_link(
        sys.path(),
        "52:54:00:aa:bb:cc",
        Duration::from_secs(5),
        LINK_POLL,
    )
    .unwrap();
    later.join().unwrap();
    assert_eq!(link.name, "eth0");
}

#[test]
fn waiting_for_a_missing_link_gives_up() {
    let sys = sys_with(&[("lo", "00:00:00:00:00:00", 1)]);
    let err = wait_for_link(
        sys.path(),
        "52:54:00:aa:bb:cc",
        Duration::from_millis(30),
        LINK_POLL,
    )
    .unwrap_err();
    assert!(matches!(err, NetError::NoLink { .. }));
    assert!(err.to_string().contains("virtio_net"));
}

#[test]
fn configure_adds_the_address_then_sets_the_link_up_announcing_it_then_the_route() {
    let sys = sys_with(&[("eth0", "52:54:00:aa:bb:cc", 2)]);
    let root = tempfile::tempdir().unwrap();
    let mut rtnl = FakeRtnl::default();
    configure(
        &mut rtnl,
        sys.path(),
        root.path(),
        &network(),
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(
        rtnl.calls.into_inner(),
        [
            Call::ArpNotify("eth0".into()),
            Call::Address(2, cidr("172.30.0.5/24")),
            Call::Up(2),
            Call::Route(2, "172.30.0.1".parse().unwrap(), false),
        ]
    );
    assert!(root.path().join("etc/resolv.conf").is_file());
}

#[test]
fn configure_adds_no_route_without_a_gateway() {
    let sys = sys_with(&[("eth0", "52:54:00:aa:bb:cc", 2)]);
    let root = tempfile::tempdir().unwrap();
    let mut rtnl = FakeRtnl::default();
    let net = GuestNetwork {
        gateway: None,
        ..network()
    };
    configure(&mut rtnl, sys.path(), root.path(), &net, Duration::ZERO).unwrap();
    assert!(
        !rtnl
            .calls
            .into_inner()
            .iter()
            .any(|c| matches!(c, Call::Route(..)))
    );
}

#[test]
fn a_gateway_outside_the_subnet_is_reached_on_link() {
    let sys = sys_with(&[("eth0", "52:54:00:aa:bb:cc", 2)]);
    let root = tempfile::tempdir().unwrap();
    let mut rtnl = FakeRtnl::default();
    let net = GuestNetwork {
        address: "172.30.0.5/32".into(),
        ..network()
    };
    configure(&mut rtnl, sys.path(), root.path(), &net, Duration::ZERO).unwrap();
    assert_eq!(
        rtnl.calls.into_inner().last(),
        Some(&Call::Route(2, "172.30.0.1".parse().unwrap(), true))
    );
}

#[test]
fn a_missing_link_still_gets_resolv_conf_but_no_changes() {
    let sys = sys_with(&[("eth0", "52:54:00:11:22:33", 2)]);
    let root = tempfile::tempdir().unwrap();
    let mut rtnl = FakeRtnl::default();
    let err = configure(
        &mut rtnl,
        sys.path(),
        root.path(),
        &network(),
        Duration::ZERO,
    )
    .unwrap_err();
    assert!(matches!(err, NetError::NoLink { .. }));
    assert!(rtnl.calls.into_inner().is_empty());
    assert!(root.path().join("etc/resolv.conf").is_file());
}

#[test]
fn a_bad_address_changes_nothing() {
    let sys = sys_with(&[("eth0", "52:54:00:aa:bb:cc", 2)]);
    let root = tempfile::tempdir().unwrap();
    let mut rtnl = FakeRtnl::default();
    let net = GuestNetwork {
        address: "172.30.0.5".into(),
        ..network()
    };
    let err = configure(&mut rtnl, sys.path(), root.path(), &net, Duration::ZERO).unwrap_err();
    assert!(matches!(err, NetError::BadCidr { .. }));
    assert_eq!(
        crate::console::chain(&err),
        "the guest network's address is not usable: \"172.30.0.5\" has no prefix length: \
         write it as ADDRESS/PREFIX, such as 172.31.99.1/24"
    );
    assert!(rtnl.calls.into_inner().is_empty());
}

#[test]
fn a_gateway_that_is_not_ipv4_changes_nothing() {
    let sys = sys_with(&[("eth0", "52:54:00:aa:bb:cc", 2)]);
    let root = tempfile::tempdir().unwrap();
    let mut rtnl = FakeRtnl::default();
    let net = GuestNetwork {
        gateway: Some("fd00::1".into()),
        ..network()
    };
    let err = configure(&mut rtnl, sys.path(), root.path(), &net, Duration::ZERO).unwrap_err();
    assert!(matches!(err, NetError::BadGateway { .. }));
    assert!(rtnl.calls.into_inner().is_empty());
}

#[test]
fn loopback_is_found_by_name() {
    let sys = sys_with(&[("lo", "00:00:00:00:00:00", 7)]);
    let mut rtnl = FakeRtnl::default();
    loopback_up(&mut rtnl, sys.path()).unwrap();
    assert_eq!(rtnl.calls.into_inner(), [Call::Up(7)]);
}

/// One `NLMSG_ERROR` message answering `seq` with `errno` (0 is an ack).
fn error_message(seq: u32, errno: i32) -> Vec<u8> {
    let mut msg = Vec::new();
    msg.extend_from_slice(&36u32.to_ne_bytes());
    msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&(-errno).to_ne_bytes());
    msg.extend_from_slice(&[0u8; 16]); // the request's header, echoed
    msg
}

#[test]
fn acks_are_matched_by_sequence_number() {
    assert!(matches!(ack_in(&error_message(7, 0), 7), Some(Ok(()))));
    let nack = ack_in(&error_message(7, 19), 7).unwrap().unwrap_err();
    assert_eq!(nack.raw_os_error(), Some(19));
    assert!(ack_in(&error_message(6, 0), 7).is_none());
    let mut two = error_message(6, 0);
    two.extend(error_message(7, 17));
    let nack = ack_in(&two, 7).unwrap().unwrap_err();
    assert_eq!(nack.raw_os_error(), Some(17));
}

/// Runs `sh -c script` through the agent's reaper (another test may have
/// started it, and it reaps every child); returns its stdout if it succeeded.
fn sh(script: &str) -> Option<String> {
    let (mut child, _, exited) = crate::reaper::Reaper::global()
        .spawn(|| {
            let child = Command::new("sh")
                .args(["-c", script])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let pid = child.id();
            Ok((child, pid))
        })
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (exited.blocking_recv().unwrap().code == 0).then_some(out)
}

fn json(script: &str) -> serde_json::Value {
    let out = sh(script).unwrap_or_else(|| panic!("{script} failed"));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn configures_a_real_link_in_a_network_namespace_of_its_own() {
    if !rustix::process::geteuid().is_root() || sh("command -v ip").is_none() {
        eprintln!(
            "SKIP configures_a_real_link_in_a_network_namespace_of_its_own: needs root and iproute2's `ip`"
        );
        return;
    }
    // Network namespaces are per thread: this thread's sockets and children
    // see only the namespace it makes, which goes away with it.
    let thread = std::thread::spawn(|| {
        if let Err(e) = rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNET) {
            eprintln!(
                "SKIP configures_a_real_link_in_a_network_namespace_of_its_own: cannot make a network namespace: {e}"
            );
            return;
        }
        let mac = "52:54:00:aa:bb:cc";
        let made = sh(&format!("ip link add d0 address {mac} type dummy")).or_else(|| {
            // Kernels without the dummy driver: a veth pair, peer up.
            sh(&format!(
                "ip link add d0 address {mac} type veth peer name d0peer && ip link set d0peer up"
            ))
        });
        assert!(made.is_some(), "cannot create a test link");
        let index = json("ip -j link show d0")[0]["ifindex"].as_u64().unwrap() as u32;
        let sys = sys_with(&[("d0", mac, index)]);
        let root = tempfile::tempdir().unwrap();

        let mut rtnl = Netlink::open().unwrap();
        // Not the host's /sys: its `lo` is another namespace's; index 1 is ours.
        loopback_up(&mut rtnl, Path::new("/nonexistent")).unwrap();
        let net = network();
        for _ in 0..2 {
            configure(&mut rtnl, sys.path(), root.path(), &net, Duration::ZERO).unwrap();
        }

        let lo = json("ip -j link show lo");
        assert!(lo[0]["flags"].as_array().unwrap().contains(&"UP".into()));
        let d0 = json("ip -j addr show dev d0");
        assert!(d0[0]["flags"].as_array().unwrap().contains(&"UP".into()));
        let inet: Vec<_> = d0[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == "inet")
            .collect();
        assert_eq!(inet.len(), 1, "configuring twice added a second address");
        assert_eq!(inet[0]["local"], "172.30.0.5");
        assert_eq!(inet[0]["prefixlen"], 24);
        assert_eq!(inet[0]["broadcast"], "172.30.0.255");
        let routes = json("ip -j route show default");
        assert_eq!(routes.as_array().unwrap().len(), 1);
        assert_eq!(routes[0]["gateway"], "172.30.0.1");
        assert_eq!(routes[0]["dev"], "d0");

        // As after a restore: a new MAC and address on the same link.
        let moved = GuestNetwork {
            mac: "52:54:00:dd:ee:01".into(),
            address: "172.30.0.77/24".into(),
            ..network()
        };
        // The fake /sys still shows the old MAC, as the guest's does.
        reconfigure(&mut rtnl, sys.path(), root.path(), Some(&net), &moved).unwrap();
        let d0 = json("ip -j addr show dev d0");
        assert_eq!(d0[0]["address"], "52:54:00:dd:ee:01");
        let inet: Vec<_> = d0[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == "inet")
            .map(|a| a["local"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(inet, ["172.30.0.77"], "the old address stays");
        let routes = json("ip -j route show default");
        assert_eq!(routes[0]["gateway"], "172.30.0.1");

        let err = rtnl.link_up(9999).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::NODEV.raw_os_error())
        );
    });
    thread.join().unwrap();
}
