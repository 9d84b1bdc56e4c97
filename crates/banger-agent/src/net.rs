//! The guest's network, configured by the agent itself (Debian's cloud
//! kernel has no `CONFIG_IP_PNP`, so `ip=` is ignored, and the minimal image
//! has no `ip`). Owns bringing `lo` up, the one NIC the config names and
//! `/etc/resolv.conf`; `/etc/hosts` is `setup.rs`'s, loading `virtio_net`
//! is `boot.rs`'s.
//!
//! 1. Bring `lo` up, with or without a network config.
//! 2. Write `/etc/resolv.conf` from `dns` and `search` (replacing whatever
//!    was there, a dangling symlink to systemd-resolved's included).
//! 3. Wait for the link whose MAC is `mac` to appear under
//!    `/sys/class/net/*/address` (virtio_net may probe it a little after
//!    boot): up to [`LINK_TIMEOUT`], looking every [`LINK_POLL`].
//! 4. Turn on its `arp_notify`, add `address` (`RTM_NEWADDR`, with the
//!    broadcast as `ip addr add` sets it), set it up (`RTM_NEWLINK`,
//!    `IFF_UP`), then add the default route via `gateway` when there is one
//!    (`RTM_NEWROUTE`, on-link when the gateway is outside the address's
//!    subnet). The config is IPv4 only, as the host's networks are.
//!
//! The link comes up with its address so that the kernel announces it at
//! once (a gratuitous ARP, from `arp_notify`): the network learns the
//! guest's MAC from that frame. passt, which serves user mode, sends a
//! forwarded connection nowhere until it has seen one from the guest (it
//! gave up on the SYN after 10 s), and otherwise the guest's first frame
//! was IPv6's duplicate address detection, up to a second later; on the
//! bridge, neighbours learn a restored or forked guest's new MAC.
//!
//! Every step is logged with its duration as `net: ...`; a failure is logged
//! and skips the steps that need it, never the boot.
//!
//! After a restore the guest still has the snapshot's MAC and address
//! (virtio-net's MAC travels in the device state); [`reconfigure`] moves
//! the same link to the new ones: the link found by its old MAC and set
//! down, the old address removed before the new one is added (in the same
//! subnet the new one would be a secondary address, which the kernel
//! removes with the primary), the new MAC set (which QEMU's filter
//! follows), the link set up again (announcing the new address from the
//! new MAC, never the old address from the new MAC), the default route
//! (gone with the link's going down) and `resolv.conf` replaced.
//!
//! Messages are built by `netlink-packet-route` (the message layer
//! `rtnetlink` is made of) and sent on a plain blocking socket: the three
//! requests run before the async runtime exists, each answered by one ack,
//! so `rtnetlink`'s async connection (and the `nix` and `netlink-proto` it
//! brings) would add nothing. Each message is emitted on its own rather
//! than through `RouteNetlinkMessage`, and replies are read as bare
//! `NLMSG_ERROR` acks, so the emitters and parsers of every other message
//! kind (traffic control, neighbours, ...) are not linked into the static
//! binary.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_proto::GuestNetwork;
use banger_sys::net::{CidrError, Ipv4Cidr};
use netlink_packet_core::{
    Emitable, ErrorBuffer, ErrorMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
    NLMSG_ALIGNTO, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader, Parseable,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rustix::net::{AddressFamily as SocketFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use crate::console::step;

/// Where the kernel lists network links.
pub const SYS_CLASS_NET: &str = "/sys/class/net";
/// How long to wait for the configured NIC to appear.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often to look for it meanwhile.
pub const LINK_POLL: Duration = Duration::from_millis(10);
/// Message types from `<linux/rtnetlink.h>`.
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
/// How long to wait for the kernel's answer to one netlink request.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("the guest network's address is not usable")]
    BadCidr {
        #[source]
        source: CidrError,
    },
    #[error("gateway {value:?} is not an IPv4 address")]
    BadGateway { value: String },
    #[error(
        "no network link with MAC address {mac} appeared within {timeout:?}: \
         check that the VM has a NIC with that MAC and the image loads virtio_net"
    )]
    NoLink { mac: String, timeout: Duration },
    #[error("opening a netlink socket")]
    Socket {
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("MAC address {value:?} is not six hex bytes")]
    BadMac { value: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The broadcast address `ip addr add ... brd +` would give `cidr`: none
/// for /31 (point-to-point, RFC 3021) and /32.
fn broadcast(cidr: Ipv4Cidr) -> Option<Ipv4Addr> {
    (cidr.prefix() < 31).then(|| cidr.broadcast())
}

/// A network link as `/sys/class/net` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
}

/// The link under `sys_class_net` whose MAC address is `mac` (any case).
pub fn find_link(sys_class_net: &Path, mac: &str) -> Option<Link> {
    let mac = mac.trim().to_ascii_lowercase();
    let entries = std::fs::read_dir(sys_class_net).ok()?;
    entries.filter_map(Result::ok).find_map(|entry| {
        let dir = entry.path();
        let address = std::fs::read_to_string(dir.join("address")).ok()?;
        if address.trim().to_ascii_lowercase() != mac {
            return None;
        }
        link_at(&dir)
    })
}

/// The link named `name` under `sys_class_net`.
pub fn link_named(sys_class_net: &Path, name: &str) -> Option<Link> {
    link_at(&sys_class_net.join(name))
}

fn link_at(dir: &Path) -> Option<Link> {
    let index = std::fs::read_to_string(dir.join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let name = dir.file_name()?.to_string_lossy().into_owned();
    Some(Link { name, index })
}

/// Step 3: [`find_link`] every `poll` until it finds the link or `timeout`
/// has passed.
pub fn wait_for_link(
    sys_class_net: &Path,
    mac: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<Link, NetError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(link) = find_link(sys_class_net, mac) {
            return Ok(link);
        }
        if Instant::now() >= deadline {
            return Err(NetError::NoLink {
                mac: mac.to_string(),
                timeout,
            });
        }
        std::thread::sleep(poll);
    }
}

/// The text of `/etc/resolv.conf` for `net`.
pub fn resolv_conf(net: &GuestNetwork) -> String {
    let mut out = String::from("# written by banger-agent at boot\n");
    for server in net.dns.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if let Some(search) = net.search.as_deref().map(str::trim)
        && !search.is_empty()
    {
        out.push_str(&format!("search {search}\n"));
    }
    out
}

/// Step 2: makes `root/etc/resolv.conf` a file of its own saying `net`'s
/// servers. A file that says so already is left alone (a restart's, or a
/// restore's on the same network: under TCG a write is ~15 ms of a
/// restore's critical path); a file is overwritten in place (replacing it
/// frees the old inode, ext4's slow path in a fresh guest); a symlink, or
/// nothing, is replaced by a new file, atomically.
pub fn write_resolv_conf(root: &Path, net: &GuestNetwork) -> Result<(), NetError> {
    let path = root.join("etc/resolv.conf");
    let tmp = root.join("etc/.resolv.conf.banger");
    let err = |source| NetError::Write {
        path: path.clone(),
        source,
    };
    let text = resolv_conf(net);
    let is_file = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
    if is_file && let Ok(now) = std::fs::read_to_string(&path) {
        return match now == text {
            true => Ok(()),
            false => crate::setup::overwrite(&path, &text, now.len()).map_err(err),
        };
    }
    std::fs::create_dir_all(root.join("etc")).map_err(err)?;
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

/// The link changes the configuration makes, behind a trait so the
/// sequence is tested without a kernel.
pub trait Rtnl {
    /// Sets `IFF_UP` on the link.
    fn link_up(&mut self, index: u32) -> io::Result<()>;
    /// Adds (or replaces) an address on the link.
    fn add_address(&mut self, index: u32, cidr: Ipv4Cidr) -> io::Result<()>;
    /// Adds (or replaces) the default route via `gateway` out of the link.
    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr, onlink: bool) -> io::Result<()>;
    /// Sets the link's MAC address.
    fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()>;
    /// Clears `IFF_UP` on the link.
    fn link_down(&mut self, index: u32) -> io::Result<()>;
    /// Removes an address from the link.
    fn del_address(&mut self, index: u32, cidr: Ipv4Cidr) -> io::Result<()>;
    /// Makes the link named `name` announce its addresses when it comes
    /// up or changes its MAC (`net.ipv4.conf.NAME.arp_notify`).
    fn arp_notify(&mut self, name: &str) -> io::Result<()>;
}

/// `52:54:00:12:34:56` as bytes.
pub fn parse_mac(value: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::BadMac {
        value: value.to_string(),
    };
    let mut out = [0u8; 6];
    let mut parts = value.trim().split(':');
    for byte in &mut out {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    match parts.next() {
        None => Ok(out),
        Some(_) => Err(bad()),
    }
}

/// Moves the guest's NIC from `old` (what it has now, if known) to `new`,
/// with files under `root` and links under `sys_class_net`: the link is
/// the one with `old`'s MAC, else `new`'s.
pub fn reconfigure(
    rtnl: &mut impl Rtnl,
    sys_class_net: &Path,
    root: &Path,
    old: Option<&GuestNetwork>,
    new: &GuestNetwork,
) -> Result<(), NetError> {
    let mac = parse_mac(&new.mac)?;
    let cidr: Ipv4Cidr = new
        .address
        .trim()
        .parse()
        .map_err(|source| NetError::BadCidr { source })?;
    let gateway = match new.gateway.as_deref().map(str::trim) {
        Some(gw) if !gw.is_empty() => {
            Some(gw.parse::<Ipv4Addr>().map_err(|_| NetError::BadGateway {
                value: gw.to_string(),
            })?)
        }
        _ => None,
    };
    let link = old
        .and_then(|o| find_link(sys_class_net, &o.mac))
        .or_else(|| find_link(sys_class_net, &new.mac))
        .ok_or_else(|| NetError::NoLink {
            mac: old.map_or(&new.mac, |o| &o.mac).clone(),
            timeout: Duration::ZERO,
        })?;
    let name = &link.name;
    let netlink = |what: String| move |source: io::Error| NetError::Netlink { what, source };
    let current = std::fs::read_to_string(sys_class_net.join(name).join("address"))
        .ok()
        .and_then(|m| parse_mac(&m).ok());
    announce(rtnl, name);
    step(&format!("net: {name} down"), || {
        rtnl.link_down(link.index)
            .map_err(netlink(format!("setting {name} down")))
    })?;
    let old_cidr = old.and_then(|o| o.address.trim().parse::<Ipv4Cidr>().ok());
    if let Some(old_cidr) = old_cidr.filter(|o| *o != cidr) {
        step(&format!("net: {old_cidr} off {name}"), || {
            match rtnl.del_address(link.index, old_cidr) {
                Err(e)
                    if e.raw_os_error() == Some(rustix::io::Errno::ADDRNOTAVAIL.raw_os_error()) =>
                {
                    Ok(())
                }
                other => other,
            }
            .map_err(netlink(format!("removing {old_cidr} from {name}")))
        })?;
    }
    if current != Some(mac) {
        step(&format!("net: {name} MAC {}", new.mac), || {
            rtnl.set_mac(link.index, mac)
                .map_err(netlink(format!("setting {name}'s MAC to {}", new.mac)))
        })?;
    }
    up_with(rtnl, &link, cidr, gateway)?;
    step("net: wrote /etc/resolv.conf", || {
        write_resolv_conf(root, new)
    })
}

/// Turns on `arp_notify` for the link; a failure costs only the
/// announcement, so it is logged and the configuration goes on.
fn announce(rtnl: &mut impl Rtnl, name: &str) {
    let _ = step(&format!("net: {name} announces itself"), || {
        rtnl.arp_notify(name).map_err(|source| NetError::Netlink {
            what: format!("turning on {name}'s arp_notify"),
            source,
        })
    });
}

/// Adds `cidr` to the (down) link, sets it up, which announces the
/// address, and adds the default route via `gateway`.
fn up_with(
    rtnl: &mut impl Rtnl,
    link: &Link,
    cidr: Ipv4Cidr,
    gateway: Option<Ipv4Addr>,
) -> Result<(), NetError> {
    let name = &link.name;
    let netlink = |what: String| move |source: io::Error| NetError::Netlink { what, source };
    step(&format!("net: {cidr} on {name}"), || {
        rtnl.add_address(link.index, cidr)
            .map_err(netlink(format!("adding {cidr} to {name}")))
    })?;
    step(&format!("net: {name} up"), || {
        rtnl.link_up(link.index)
            .map_err(netlink(format!("setting {name} up")))
    })?;
    if let Some(gw) = gateway {
        step(&format!("net: default route via {gw}"), || {
            rtnl.add_default_route(link.index, gw, !cidr.contains(gw))
                .map_err(netlink(format!("adding the default route via {gw}")))
        })?;
    }
    Ok(())
}

/// Runs steps 1-4 on the live system: `lo` always, the NIC when `network`
/// is given. Logs every step; never fails.
pub fn run(network: Option<&GuestNetwork>) {
    let mut rtnl = match Netlink::open() {
        Ok(rtnl) => rtnl,
        Err(e) => {
            crate::console::log(format_args!(
                "net: cannot configure the network: {}",
                crate::console::chain(&e)
            ));
            return;
        }
    };
    let sys = Path::new(SYS_CLASS_NET);
    let _ = step("net: lo up", || loopback_up(&mut rtnl, sys));
    if let Some(net) = network {
        let _ = configure(&mut rtnl, sys, Path::new("/"), net, LINK_TIMEOUT);
    }
}

/// Step 1.
pub fn loopback_up(rtnl: &mut impl Rtnl, sys_class_net: &Path) -> Result<(), NetError> {
    // `lo` is always the first link of a namespace.
    let index = link_named(sys_class_net, "lo").map_or(1, |l| l.index);
    rtnl.link_up(index).map_err(|source| NetError::Netlink {
        what: "setting lo up".into(),
        source,
    })
}

/// Steps 2-4 for `net`, with files under `root` and links listed under
/// `sys_class_net`. Returns the first error after logging it.
pub fn configure(
    rtnl: &mut impl Rtnl,
    sys_class_net: &Path,
    root: &Path,
    net: &GuestNetwork,
    timeout: Duration,
) -> Result<(), NetError> {
    let resolv = step("net: wrote /etc/resolv.conf", || {
        write_resolv_conf(root, net)
    });
    let cidr: Ipv4Cidr = logged(
        net.address
            .trim()
            .parse()
            .map_err(|source| NetError::BadCidr { source }),
    )?;
    let gateway = match net.gateway.as_deref().map(str::trim) {
        Some(gw) if !gw.is_empty() => Some(logged(gw.parse::<Ipv4Addr>().map_err(|_| {
            NetError::BadGateway {
                value: gw.to_string(),
            }
        }))?),
        _ => None,
    };
    let link = step(&format!("net: found the link with MAC {}", net.mac), || {
        wait_for_link(sys_class_net, &net.mac, timeout, LINK_POLL)
    })?;
    announce(rtnl, &link.name);
    up_with(rtnl, &link, cidr, gateway)?;
    resolv
}

/// Logs an error that has no step of its own.
fn logged<T>(result: Result<T, NetError>) -> Result<T, NetError> {
    if let Err(e) = &result {
        crate::console::log(format_args!("net: {}", crate::console::chain(e)));
    }
    result
}

/// A blocking `NETLINK_ROUTE` socket that sends one request at a time and
/// waits for its ack.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// A socket in the caller's network namespace (the calling thread's).
    pub fn open() -> Result<Self, NetError> {
        let err = |e: rustix::io::Errno| NetError::Socket { source: e.into() };
        // NETLINK_ROUTE is protocol 0; unbound, the kernel binds it on first send.
        let fd = rustix::net::socket_with(
            SocketFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(err)?;
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(NETLINK_TIMEOUT),
        )
        .map_err(err)?;
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends `body` as a `message_type` message with `NLM_F_REQUEST |
    /// NLM_F_ACK | flags` and waits for the kernel's ack; a negative ack
    /// becomes its errno.
    fn request(&mut self, message_type: u16, body: &impl Emitable, flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.message_type = message_type;
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        header.length = (header.buffer_len() + body.buffer_len()) as u32;
        let mut bytes = vec![0u8; header.length as usize];
        header.emit(&mut bytes);
        body.emit(&mut bytes[header.buffer_len()..]);
        rustix::net::send(&self.fd, &bytes, SendFlags::empty())?;

        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = rustix::net::recv(&self.fd, &mut buf, RecvFlags::empty())?;
            if let Some(result) = ack_in(&buf[..n], self.seq) {
                return result;
            }
        }
    }
}

/// The outcome of the ack for `seq` among the messages of one datagram,
/// if it is there.
fn ack_in(datagram: &[u8], seq: u32) -> Option<io::Result<()>> {
    let mut rest = datagram;
    while let Ok(msg) = NetlinkBuffer::new_checked(rest) {
        let len = msg.length() as usize;
        if msg.message_type() == NLMSG_ERROR && msg.sequence_number() == seq {
            let payload = msg.payload();
            let parsed = ErrorBuffer::new_checked(&payload)
                .and_then(|b| ErrorMessage::parse(&b))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
            return Some(match parsed {
                Ok(err) if err.code.is_none() => Ok(()),
                Ok(err) => Err(err.to_io()),
                Err(e) => Err(e),
            });
        }
        let next = len.next_multiple_of(usize::from(NLMSG_ALIGNTO));
        if len == 0 || next >= rest.len() {
            break;
        }
        rest = &rest[next..];
    }
    None
}

impl Rtnl for Netlink {
    fn link_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RTM_NEWLINK, &msg, 0)
    }

    fn add_address(&mut self, index: u32, cidr: Ipv4Cidr) -> io::Result<()> {
        let addr = IpAddr::V4(cidr.addr());
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = cidr.prefix();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        if let Some(brd) = broadcast(cidr) {
            msg.attributes.push(AddressAttribute::Broadcast(brd));
        }
        self.request(RTM_NEWADDR, &msg, NLM_F_CREATE | NLM_F_REPLACE)
    }

    fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(RTM_NEWLINK, &msg, 0)
    }

    fn link_down(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RTM_NEWLINK, &msg, 0)
    }

    fn del_address(&mut self, index: u32, cidr: Ipv4Cidr) -> io::Result<()> {
        let addr = IpAddr::V4(cidr.addr());
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = cidr.prefix();
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        self.request(RTM_DELADDR, &msg, 0)
    }

    fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr, onlink: bool) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        if onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(RTM_NEWROUTE, &msg, NLM_F_CREATE | NLM_F_REPLACE)
    }

    fn arp_notify(&mut self, name: &str) -> io::Result<()> {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/arp_notify"), "1")
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
