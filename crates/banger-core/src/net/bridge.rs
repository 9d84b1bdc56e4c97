//! Bridge mode on the host: the bridge with its address, banger's own
//! nftables NAT table, dnsmasq answering `<vm>.<suffix>`, and taps from a
//! warm pool. The host side is set up (idempotently) by each bridge-mode
//! boot and torn down per VM on stop, delete and failed create: the tap goes
//! back to the pool (or away), the name leaves DNS, and the address lease
//! goes with the VM's row. When the last running bridge VM goes, the NAT
//! table and the pool go too, so an idle host carries nothing of ours but
//! the bridge.

use crate::error::Error;
use crate::manager::Manager;
use crate::ops::Op;
use crate::store::VmRecord;
use banger_api::VmState;
use banger_sys::net::Ipv4Cidr;
use banger_sys::net::dnsmasq;
use banger_sys::net::link::{Links, NetlinkLinks};
use banger_sys::net::nft::Nft;
use banger_sys::net::tap::{TapOptions, Taps, TunTaps};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

/// Every tap banger makes starts with this (and fits 15 characters).
pub const TAP_PREFIX: &str = "bgtap";

/// Idle taps ready for the next bridge-mode boot.
#[derive(Default)]
pub struct TapPool {
    idle: Mutex<Vec<String>>,
}

impl TapPool {
    fn take(&self) -> Option<String> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put(&self, tap: String) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tap)
    }

    fn len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn drain(&self) -> Vec<String> {
        std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn new_tap_name() -> String {
    format!("{TAP_PREFIX}{:06x}", rand::random::<u32>() & 0xff_ffff)
}

fn net_err(e: impl std::error::Error + 'static) -> Error {
    Error::failed(crate::error::chain(&e))
}

impl Manager {
    fn subnet(&self) -> Result<crate::net::Subnet, Error> {
        crate::net::Subnet::parse(&self.config.bridge_subnet).map_err(Error::Invalid)
    }

    pub fn dns_hosts_dir(&self) -> PathBuf {
        self.paths.state_dir.join("dns/hosts")
    }

    fn dnsmasq_config(&self) -> Result<dnsmasq::DnsmasqConfig, Error> {
        let subnet = self.subnet()?;
        let run_dir = self.paths.runtime_dir.join("dns");
        std::fs::create_dir_all(&run_dir)
            .map_err(Error::io(format!("cannot create {}", run_dir.display())))?;
        let mut cfg =
            dnsmasq::DnsmasqConfig::new(subnet.gateway(), &run_dir, &self.dns_hosts_dir());
        cfg.suffix = self.config.dns_suffix.clone();
        // Stay root: the hosts dir sits under a state dir only we can read.
        cfg.user = Some("root".into());
        if self.config.egress {
            cfg.upstreams = host_resolvers();
        }
        Ok(cfg)
    }

    /// Bridge, address, NAT and DNS, made idempotently (blocking).
    fn ensure_bridge_host(&self) -> Result<(), Error> {
        let subnet = self.subnet()?;
        let bridge = &self.config.bridge_name;
        let links = NetlinkLinks::new().map_err(net_err)?;
        links.ensure_bridge(bridge).map_err(net_err)?;
        let cidr = Ipv4Cidr::new(subnet.gateway(), subnet.prefix).map_err(net_err)?;
        links.ensure_ipv4(bridge, cidr).map_err(net_err)?;
        links.set_up(bridge).map_err(net_err)?;
        if self.config.egress {
            let net = Ipv4Cidr::new(subnet.network, subnet.prefix).map_err(net_err)?;
            Nft::new(&*self.runner)
                .ensure_nat(&self.config.nft_table, net, bridge)
                .map_err(net_err)?;
            if self.config.allow_ip_forward
                && !banger_sys::net::nft::ipv4_forwarding().unwrap_or(false)
            {
                banger_sys::net::nft::set_ipv4_forwarding(true).map_err(net_err)?;
            }
        }
        let cfg = self.dnsmasq_config()?;
        dnsmasq::prepare_hosts_dir(&cfg.hosts_dir).map_err(net_err)?;
        if dnsmasq::running(&cfg.pid_file).is_none() {
            dnsmasq::start(&cfg).map_err(net_err)?;
        }
        Ok(())
    }

    /// The tap a bridge-mode VM boots with (none for other modes): the host
    /// side is made ready, a tap comes from the pool (or is made), joins the
    /// bridge, and the VM's name goes into DNS.
    pub(crate) async fn acquire_tap(
        &self,
        op: &Op,
        vm: &VmRecord,
    ) -> Result<Option<String>, Error> {
        if vm.network != "bridge" {
            return Ok(None);
        }
        if banger_sys::process::euid() != 0 {
            return Err(Error::Invalid(
                "bridge networking needs root (or CAP_NET_ADMIN): run bangerd as root or use --network user".into(),
            ));
        }
        let ip: Ipv4Addr = vm
            .ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| Error::failed(format!("vm {:?} has no address lease", vm.name)))?;
        op.stage("network", "connect to the bridge", async {
            self.ensure_bridge_host()?;
            let links = NetlinkLinks::new().map_err(net_err)?;
            let tap = match self.bridge.take() {
                Some(t) if links.exists(&t).unwrap_or(false) => t,
                _ => {
                    let t = new_tap_name();
                    TunTaps
                        .create_tap(&t, &TapOptions::default())
                        .map_err(net_err)?;
                    t
                }
            };
            let joined = links
                .attach(&tap, &self.config.bridge_name)
                .and_then(|()| links.set_up(&tap));
            if let Err(e) = joined {
                let _ = links.delete(&tap);
                return Err(net_err(e));
            }
            if let Err(e) = dnsmasq::write_host_entry(&self.dns_hosts_dir(), &vm.name, ip) {
                self.release_tap(vm, Some(tap));
                return Err(net_err(e));
            }
            self.refill_pool();
            Ok(Some(tap))
        })
        .await
    }

    /// Tops the idle pool up to `tap_pool_size` in the background, so the
    /// next bridge-mode boot takes a ready tap (~0.3 ms to make each).
    fn refill_pool(&self) {
        let missing = self.config.tap_pool_size.saturating_sub(self.bridge.len());
        for _ in 0..missing {
            let t = new_tap_name();
            match TunTaps.create_tap(&t, &TapOptions::default()) {
                Ok(()) => self.bridge.put(t),
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "cannot pre-create a tap");
                    break;
                }
            }
        }
    }

    /// Gives a VM's tap back and removes its DNS name; the last running
    /// bridge VM also takes the NAT table and the idle pool with it.
    pub(crate) fn release_tap(&self, vm: &VmRecord, tap: Option<String>) {
        if vm.network != "bridge" {
            return;
        }
        let _ = dnsmasq::remove_host_entry(&self.dns_hosts_dir(), &vm.name);
        let others_running = self.store.vms().unwrap_or_default().iter().any(|v| {
            v.name != vm.name
                && v.network == "bridge"
                && matches!(v.state, VmState::Running | VmState::Creating)
        });
        let mut doomed = Vec::new();
        if let Some(tap) = tap {
            if let Ok(links) = NetlinkLinks::new() {
                let _ = links.detach(&tap);
            }
            if others_running && self.bridge.len() < self.config.tap_pool_size {
                self.bridge.put(tap);
            } else {
                doomed.push(tap);
            }
        }
        if !others_running {
            doomed.extend(self.bridge.drain());
            if let Err(e) = Nft::new(&*self.runner).remove_nat(&self.config.nft_table) {
                tracing::warn!(error = %crate::error::chain(&e), "cannot remove the nat table");
            }
        }
        // Deleting a tap takes ~20 ms: off the caller's path.
        if !doomed.is_empty() {
            std::thread::spawn(move || delete_taps(&doomed));
        }
    }

    /// At start-up: taps, DNS names and NAT that no running VM owns are
    /// leftovers of a killed daemon; remove them.
    pub(crate) fn reconcile_bridge(&self) {
        if banger_sys::process::euid() != 0 {
            return;
        }
        let vms = self.store.vms().unwrap_or_default();
        let in_use: Vec<String> = vms
            .iter()
            .filter_map(|v| self.handles.get(&v.name).and_then(|rt| rt.handles.tap))
            .collect();
        if let Ok(links) = NetlinkLinks::new() {
            let stale: Vec<String> = links
                .list(TAP_PREFIX)
                .unwrap_or_default()
                .into_iter()
                .map(|l| l.name)
                .filter(|n| !in_use.contains(n))
                .collect();
            if !stale.is_empty() {
                tracing::info!(taps = ?stale, "removing taps no vm owns");
                std::thread::spawn(move || delete_taps(&stale));
            }
        }
        let running: Vec<&str> = vms
            .iter()
            .filter(|v| v.network == "bridge" && self.handles.get(&v.name).is_some())
            .map(|v| v.name.as_str())
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.dns_hosts_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && !running.contains(&name.as_str()) {
                    let _ = dnsmasq::remove_host_entry(&self.dns_hosts_dir(), &name);
                }
            }
        }
        if running.is_empty() {
            let _ = Nft::new(&*self.runner).remove_nat(&self.config.nft_table);
        }
    }
}

fn delete_taps(taps: &[String]) {
    if let Ok(links) = NetlinkLinks::new() {
        for t in taps {
            if let Err(e) = links.delete(t) {
                tracing::warn!(tap = %t, error = %e, "cannot delete tap");
            }
        }
    }
}

/// The host's own resolvers (not loopback ones, which the guest cannot
/// reach through dnsmasq's view), as dnsmasq upstreams.
fn host_resolvers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_string())
        .filter(|s| s.parse::<Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .collect()
}
