//! Network planning for VMs: which mode a VM gets, the bridge subnet and the
//! address allocator (IPAM), MACs, loopback port picks for user mode. Plain
//! logic; the kernel objects (taps, bridge, nftables, dnsmasq) are driven
//! through `banger_sys::net` by the network capability (`net/bridge.rs`).

pub mod bridge;
pub mod ipam;

use std::net::Ipv4Addr;

/// How a VM is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A tap on the daemon's bridge, a leased address, DNS, NAT out.
    Bridge,
    /// QEMU's user-mode NAT; reachable through loopback forwards. No privileges.
    User,
    /// The agent channel only.
    None,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "bridge" => Ok(Mode::Bridge),
            "user" => Ok(Mode::User),
            "none" => Ok(Mode::None),
            other => Err(format!(
                "unknown network mode {other:?}: use bridge, user or none"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bridge => "bridge",
            Mode::User => "user",
            Mode::None => "none",
        }
    }

    /// The mode `auto` stands for: bridge when this daemon may make taps.
    pub fn auto(privileged: bool) -> Mode {
        if privileged { Mode::Bridge } else { Mode::User }
    }
}

/// An IPv4 subnet such as `172.30.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Subnet, String> {
        let bad = || format!("{s:?} is not an IPv4 subnet like 172.30.0.0/24 (prefix 8-30)");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The bridge's own address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// `a.b.c.d/nn` for an address in this subnet.
    pub fn with_prefix(&self, ip: Ipv4Addr) -> String {
        format!("{ip}/{}", self.prefix)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A locally administered, stable MAC for a VM id (QEMU's 52:54:00 prefix).
pub fn mac_for(vm_id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(vm_id.as_bytes());
    format!("52:54:00:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2])
}

/// A free TCP port on 127.0.0.1, picked by the kernel.
pub fn free_loopback_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

/// The guest side of user mode (QEMU's slirp defaults).
pub mod user {
    pub const ADDRESS: &str = "10.0.2.15/24";
    pub const GATEWAY: &str = "10.0.2.2";
    pub const DNS: &str = "10.0.2.3";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_normalise() {
        let s = Subnet::parse("172.30.0.9/24").unwrap();
        assert_eq!(s.to_string(), "172.30.0.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(172, 30, 0, 255));
        assert!(
            s.contains(Ipv4Addr::new(172, 30, 0, 77)) && !s.contains(Ipv4Addr::new(172, 30, 1, 1))
        );
        assert!(Subnet::parse("172.30.0.0").is_err());
        assert!(Subnet::parse("172.30.0.0/31").is_err());
        assert!(Subnet::parse("300.1.1.1/24").is_err());
    }

    #[test]
    fn macs_are_stable_and_local() {
        assert_eq!(mac_for("abc"), mac_for("abc"));
        assert_ne!(mac_for("abc"), mac_for("abd"));
        assert!(mac_for("abc").starts_with("52:54:00:"));
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("user"), Ok(Mode::User));
        assert!(
            Mode::parse("wifi")
                .unwrap_err()
                .contains("bridge, user or none")
        );
        assert_eq!(Mode::auto(true), Mode::Bridge);
        assert_eq!(Mode::auto(false), Mode::User);
    }

    #[test]
    fn loopback_ports_are_free() {
        let p = free_loopback_port().unwrap();
        assert!(std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
    }
}
