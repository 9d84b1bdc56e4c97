//! Host-side networking for `bridge` mode: the kernel objects a VM's NIC
//! needs and the two external programs that serve the bridge.
//!
//! One module per concern, each behind a small trait or plain functions so
//! the tap pool, IPAM and the network capability in `banger-core` are logic
//! that unit tests drive with [`fake::FakeLinks`] and a fake
//! [`crate::command::Runner`]:
//!
//! | module | owns | talks to the kernel through |
//! |---|---|---|
//! | [`tap`] | persistent tap devices (create, delete) | `TUNSETIFF`/`TUNSETPERSIST` on `/dev/net/tun` |
//! | [`link`] | bridges, addresses, up/down, bridge membership, listing | `NETLINK_ROUTE` |
//! | [`nft`] | banger's own NAT table; IPv4 forwarding | the `nft` program; `/proc/sys` |
//! | [`dnsmasq`] | the DNS server for `<vm>.<suffix>` and its hosts dir | the `dnsmasq` program |
//!
//! This module holds the types they share: [`Ipv4Cidr`], [`MacAddr`] (with
//! [`mac_from_id`]) and the interface-name rule ([`validate_ifname`]).
//!
//! Everything here acts in the **network namespace of the calling thread**
//! (a netlink socket, `/dev/net/tun`, `/proc/sys/net` and spawned programs
//! all take it from the thread that opens or spawns them). The daemon runs in
//! the host's namespace; the privileged tests (`netns_tests`) run the same
//! code on a thread that entered a namespace of their own, so they never
//! touch the host's interfaces or rules.
//!
//! It does not plan anything: which subnet, which address a VM gets, how
//! many taps the pool keeps warm, or when to delete them is `banger-core`'s.

pub mod dnsmasq;
pub mod fake;
pub mod link;
pub mod nft;
pub mod tap;

#[cfg(test)]
mod netns_tests;

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// The kernel's limit on interface names (`IFNAMSIZ` less the NUL).
pub const IFNAME_MAX: usize = 15;

/// Checks `name` against the kernel's rules for interface names (1 to 15
/// bytes, not `.` or `..`) and banger's stricter alphabet (ASCII letters,
/// digits, `-`, `_`, `.`), which keeps names safe to place in an `nft`
/// script and on a `dnsmasq` command line without quoting.
pub fn validate_ifname(name: &str) -> Result<(), IfNameError> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.len() > IFNAME_MAX {
        "is longer than the kernel's 15-character limit: choose a shorter name or prefix"
    } else if name == "." || name == ".." {
        "is reserved by the kernel"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        "may only contain ASCII letters, digits, '-', '_' and '.'"
    } else {
        return Ok(());
    };
    Err(IfNameError {
        name: name.to_string(),
        reason,
    })
}

/// An interface name the kernel (or banger) would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("interface name {name:?} {reason}")]
pub struct IfNameError {
    pub name: String,
    pub reason: &'static str,
}

/// An IPv4 address with a prefix length, as in `172.31.99.1/24`: either an
/// interface address (host bits set) or a subnet (see [`Ipv4Cidr::network`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Ipv4Cidr, CidrError> {
        if prefix > 32 {
            return Err(CidrError::PrefixTooLong {
                input: format!("{addr}/{prefix}"),
                prefix: prefix.into(),
            });
        }
        Ok(Ipv4Cidr { addr, prefix })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    /// The subnet this address is in, host bits cleared
    /// (`172.31.99.1/24` → `172.31.99.0/24`).
    pub fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & mask_bits(self.prefix)),
            prefix: self.prefix,
        }
    }

    /// The subnet's broadcast address (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask_bits(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = mask_bits(self.prefix);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

fn mask_bits(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(input: &str) -> Result<Ipv4Cidr, CidrError> {
        let Some((addr, prefix)) = input.split_once('/') else {
            return Err(CidrError::MissingPrefix {
                input: input.to_string(),
            });
        };
        let addr = addr.parse().map_err(|source| CidrError::BadAddress {
            input: input.to_string(),
            source,
        })?;
        // `u8::from_str` accepts a leading '+'; a prefix is plain digits.
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
            return Err(CidrError::BadPrefix {
                input: input.to_string(),
            });
        }
        let prefix: u32 = prefix.parse().map_err(|_| CidrError::BadPrefix {
            input: input.to_string(),
        })?;
        if prefix > 32 {
            return Err(CidrError::PrefixTooLong {
                input: input.to_string(),
                prefix,
            });
        }
        Ipv4Cidr::new(addr, prefix as u8)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{input:?} has no prefix length: write it as ADDRESS/PREFIX, such as 172.31.99.1/24")]
    MissingPrefix { input: String },
    #[error("{input:?} does not start with an IPv4 address")]
    BadAddress {
        input: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("{input:?} has no valid prefix length after '/': use a number from 0 to 32")]
    BadPrefix { input: String },
    #[error("{input:?} has prefix length {prefix}: IPv4 prefixes go up to 32")]
    PrefixTooLong { input: String, prefix: u32 },
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Locally administered (bit 1 of the first octet) unicast (bit 0 clear).
    pub fn is_local_unicast(&self) -> bool {
        self.0[0] & 0b11 == 0b10
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The guest NIC's address for the VM with id `id`: `52:54:00` (QEMU's
/// customary locally administered, unicast prefix) followed by three bytes
/// of a stable hash of the id, so a VM keeps its MAC (and the guest its
/// interface naming and ARP entries) across restarts.
///
/// 24 bits make a clash between two of N VMs likely only when N reaches the
/// thousands (about 0.03 % for 100 VMs); a caller that keeps many VMs on one
/// bridge should check the new MAC against the ones in use.
pub fn mac_from_id(id: &str) -> MacAddr {
    // FNV-1a: stable across Rust versions and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let h = hash.to_be_bytes();
    MacAddr([0x52, 0x54, 0x00, h[5], h[6], h[7]])
}

/// Whether this network namespace has an IPv4 default route (read from
/// `/proc/net/route`): what a user-mode backend such as passt needs to find
/// its outbound interface.
pub fn has_ipv4_default_route() -> bool {
    std::fs::read_to_string("/proc/net/route").is_ok_and(|t| routes_have_default(&t))
}

/// Whether a `/proc/net/route` text has a default route that is up.
fn routes_have_default(text: &str) -> bool {
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask …; RTF_UP = 1.
        f.len() > 7
            && f[1] == "00000000"
            && f[7] == "00000000"
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 1 == 1)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_default_route_is_destination_and_mask_zero_and_up() {
        let head =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        let subnet = "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let default = "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert!(super::routes_have_default(&format!(
            "{head}{subnet}{default}"
        )));
        assert!(!super::routes_have_default(&format!("{head}{subnet}")));
        assert!(!super::routes_have_default(head));
        let down = default.replace("\t0003\t", "\t0002\t");
        assert!(!super::routes_have_default(&format!("{head}{down}")));
    }

    use super::*;

    #[test]
    fn cidr_parses_and_formats_with_its_prefix() {
        let c: Ipv4Cidr = "172.31.99.1/24".parse().unwrap();
        assert_eq!(c.addr(), Ipv4Addr::new(172, 31, 99, 1));
        assert_eq!(c.prefix(), 24);
        assert_eq!(c.to_string(), "172.31.99.1/24");
        assert_eq!(c.network().to_string(), "172.31.99.0/24");
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(172, 31, 99, 255));
    }

    #[test]
    fn cidr_edge_prefixes_work() {
        let all: Ipv4Cidr = "10.1.2.3/0".parse().unwrap();
        assert_eq!(all.network().to_string(), "0.0.0.0/0");
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        let host: Ipv4Cidr = "10.1.2.3/32".parse().unwrap();
        assert_eq!(host.network(), host);
        assert!(host.contains(Ipv4Addr::new(10, 1, 2, 3)));
        assert!(!host.contains(Ipv4Addr::new(10, 1, 2, 4)));
    }

    #[test]
    fn cidr_contains_only_its_subnet() {
        let c: Ipv4Cidr = "172.31.99.0/24".parse().unwrap();
        assert!(c.contains(Ipv4Addr::new(172, 31, 99, 200)));
        assert!(!c.contains(Ipv4Addr::new(172, 31, 100, 1)));
    }

    #[test]
    fn cidr_rejects_malformed_input_with_a_hint() {
        let err = "172.31.99.1".parse::<Ipv4Cidr>().unwrap_err();
        assert!(matches!(err, CidrError::MissingPrefix { .. }));
        assert!(err.to_string().contains("ADDRESS/PREFIX"), "{err}");
        for bad in ["172.31.99/24", "x/24", "/24"] {
            assert!(
                matches!(bad.parse::<Ipv4Cidr>(), Err(CidrError::BadAddress { .. })),
                "{bad}"
            );
        }
        for bad in [
            "1.2.3.4/",
            "1.2.3.4/+8",
            "1.2.3.4/a",
            "1.2.3.4/24/1",
            "1.2.3.4/0008",
        ] {
            assert!(
                matches!(bad.parse::<Ipv4Cidr>(), Err(CidrError::BadPrefix { .. })),
                "{bad}"
            );
        }
        let err = "1.2.3.4/33".parse::<Ipv4Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"1.2.3.4/33\" has prefix length 33: IPv4 prefixes go up to 32"
        );
        assert!(Ipv4Cidr::new(Ipv4Addr::LOCALHOST, 40).is_err());
    }

    #[test]
    fn mac_is_stable_local_unicast_with_qemu_prefix() {
        let a = mac_from_id("01J9ZK3Q7V");
        assert_eq!(a, mac_from_id("01J9ZK3Q7V"));
        assert_eq!(&a.octets()[..3], &[0x52, 0x54, 0x00]);
        assert!(a.is_local_unicast());
        assert_ne!(a, mac_from_id("01J9ZK3Q7W"));
        let text = a.to_string();
        assert_eq!(text.len(), 17);
        assert!(text.starts_with("52:54:00:"), "{text}");
        assert_eq!(text, text.to_lowercase());
    }

    #[test]
    fn mac_generation_rarely_collides() {
        let macs: std::collections::HashSet<MacAddr> =
            (0..2000).map(|i| mac_from_id(&format!("vm-{i}"))).collect();
        // 2000 ids over 2^24 values: the expected number of clashes is ~0.1.
        assert!(macs.len() >= 1998, "{}", macs.len());
    }

    #[test]
    fn ifname_validation_enforces_kernel_limit_and_alphabet() {
        assert!(validate_ifname("banger0").is_ok());
        assert!(validate_ifname("bgtap-123456789").is_ok()); // exactly 15
        let err = validate_ifname("bgtap-1234567890").unwrap_err();
        assert!(err.to_string().contains("15-character limit"), "{err}");
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("..").is_err());
        for bad in ["a b", "a/b", "a:b", "tap\"x", "tap;x", "tàp"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }
}
