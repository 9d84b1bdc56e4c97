//! Networking of VMs: the bridge-mode host side as a service
//! ([`network::Network`]: bridge, NAT, DNS, taps from a warm pool, address
//! leases), the address allocator, the DNS server it drives, user mode's
//! passt process ([`passt`]), and the plain rules shared by the network
//! capabilities (MACs, loopback ports, user mode's fixed guest addresses,
//! how `vm ssh` reaches a guest). Kernel
//! objects are reached only through `banger_sys::net`'s traits.

pub mod checks;
pub mod dns;
pub mod ipam;
pub mod leaks;
pub mod network;
pub mod passt;
pub mod tap_pool;

pub use network::{Network, NetworkDeps};

use banger_api::NetworkMode;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Link(#[from] banger_sys::net::link::LinkError),
    #[error(transparent)]
    Tap(#[from] banger_sys::net::tap::TapError),
    #[error(transparent)]
    Nft(#[from] banger_sys::net::nft::NftError),
    #[error(transparent)]
    Forwarding(#[from] banger_sys::net::nft::ForwardingError),
    #[error(transparent)]
    Dns(#[from] banger_sys::net::dnsmasq::DnsmasqError),
    #[error(transparent)]
    Passt(#[from] passt::PasstError),
    #[error("vm {vm:?} has no address lease")]
    NoLease { vm: String },
    #[error(
        "bridge {bridge} is in use by another banger instance ({holder}; it lets the bridge go bridge_idle_secs after its last bridge vm): give this one a bridge of its own with bridge_name and bridge_subnet in its config.toml"
    )]
    BridgeInUse { bridge: String, holder: String },
    #[error("cannot create {path}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The mode `auto` stands for: bridge when this daemon may make taps.
pub fn auto_mode(privileged: bool) -> NetworkMode {
    if privileged {
        NetworkMode::Bridge
    } else {
        NetworkMode::User
    }
}

/// The guest NIC's MAC for a VM id.
pub fn mac_for(vm_id: &str) -> String {
    banger_sys::net::mac_from_id(vm_id).to_string()
}

/// A free TCP port on 127.0.0.1, picked by the kernel.
pub fn free_loopback_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

/// The guest side of user mode (QEMU's slirp defaults, which passt is
/// told to match).
pub mod user {
    pub const ADDRESS: &str = "10.0.2.15/24";
    pub const GATEWAY: &str = "10.0.2.2";
    pub const DNS: &str = "10.0.2.3";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_and_local() {
        assert_eq!(mac_for("abc"), mac_for("abc"));
        assert_ne!(mac_for("abc"), mac_for("abd"));
        assert!(mac_for("abc").starts_with("52:54:00:"));
    }

    #[test]
    fn auto_is_bridge_only_with_privileges() {
        assert_eq!(auto_mode(true), NetworkMode::Bridge);
        assert_eq!(auto_mode(false), NetworkMode::User);
    }

    #[test]
    fn loopback_ports_are_free() {
        let p = free_loopback_port().unwrap();
        assert!(std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
    }
}
