//! Egress policy: what a guest may reach besides its own network. By
//! default a guest reaches the outside (when the config's `egress` allows)
//! but not the host's own services; a create request may limit the outside
//! to an allow-list (`--allow-host`, `--allow-cidr`; bridge mode, enforced
//! in nftables by the network service) or open the host (`--host-access`).
//! This capability only checks the request and keeps the policy with the
//! VM; the network capabilities apply it ([`Egress::of`]).

use super::Capability;
use crate::error::Error;
use crate::store::VmRecord;
use banger_api::{CreateVm, NetworkMode};
use banger_sys::net::Ipv4Cidr;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, ToSocketAddrs};

/// Its key in a VM's options.
pub const NAME: &str = "egress";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    #[serde(default)]
    pub host_access: bool,
}

impl Egress {
    /// The policy kept with `vm` (the default when it asked for nothing).
    pub fn of(vm: &VmRecord) -> Egress {
        vm.options
            .get(NAME)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// Whether the outside is limited to an allow-list.
    pub fn limited(&self) -> bool {
        !self.allow_hosts.is_empty() || !self.allow_cidrs.is_empty()
    }

    /// The allow-list as networks, host names resolved now (IPv4 only).
    pub fn resolve(&self) -> Result<Vec<Ipv4Cidr>, Error> {
        let mut out: Vec<Ipv4Cidr> = self
            .allow_cidrs
            .iter()
            .map(|c| parse_cidr(c).expect("checked at create"))
            .collect();
        for host in &self.allow_hosts {
            let addrs = (host.as_str(), 0)
                .to_socket_addrs()
                .map_err(Error::io(format!("cannot resolve --allow-host {host}")))?;
            for a in addrs {
                if let IpAddr::V4(ip) = a.ip() {
                    out.push(Ipv4Cidr::new(ip, 32).expect("32 is a prefix"));
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The list as the API shows it.
    pub fn describe(&self) -> Vec<String> {
        self.allow_hosts
            .iter()
            .chain(&self.allow_cidrs)
            .cloned()
            .collect()
    }
}

/// `10.0.0.0/8`, or a single address.
fn parse_cidr(s: &str) -> Result<Ipv4Cidr, String> {
    let bad = || format!("{s:?} is not an IPv4 network like 10.0.0.0/8 or an address");
    if s.contains('/') {
        s.parse::<Ipv4Cidr>()
            .map(|c| c.network())
            .map_err(|_| bad())
    } else {
        s.parse()
            .map(|ip| Ipv4Cidr::new(ip, 32).expect("32"))
            .map_err(|_| bad())
    }
}

fn check_host(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{h:?} is not a host name"))
    }
}

pub struct EgressPolicy;

impl Capability for EgressPolicy {
    fn name(&self) -> &'static str {
        NAME
    }

    fn applies(&self, _vm: &VmRecord) -> bool {
        false // nothing to do at boot: the network capabilities apply it
    }

    fn plan(&self, req: &CreateVm, vm: &mut VmRecord) -> Result<(), Error> {
        for c in &req.allow_cidrs {
            parse_cidr(c).map_err(|p| Error::invalid("--allow-cidr", p))?;
        }
        for h in &req.allow_hosts {
            check_host(h).map_err(|p| Error::invalid("--allow-host", p))?;
        }
        let policy = Egress {
            allow_hosts: req.allow_hosts.clone(),
            allow_cidrs: req.allow_cidrs.clone(),
            host_access: req.host_access,
        };
        if policy.limited() && vm.network != NetworkMode::Bridge {
            return Err(Error::invalid(
                "--allow-host/--allow-cidr",
                format!(
                    "need --network bridge (this vm's network is {})",
                    vm.network
                ),
            ));
        }
        if policy != Egress::default() {
            vm.options.insert(
                NAME.into(),
                serde_json::to_value(&policy).expect("serializes"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_parse_and_refuse_nonsense() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        assert!(parse_cidr("example.com").is_err());
        assert!(check_host("deb.debian.org").is_ok());
        assert!(
            check_host("a b").is_err() && check_host("-x.com").is_err() && check_host("").is_err()
        );
        let e = Egress {
            allow_cidrs: vec!["10.0.0.0/8".into(), "10.0.0.0/8".into()],
            allow_hosts: vec!["localhost".into()],
            host_access: false,
        };
        let r = e.resolve().unwrap();
        assert!(r.contains(&"127.0.0.1/32".parse().unwrap()), "{r:?}");
        assert_eq!(
            r.iter().filter(|c| c.to_string() == "10.0.0.0/8").count(),
            1
        );
    }
}
