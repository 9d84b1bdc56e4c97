//! `banger doctor`'s network lines: the default mode, the tools bridge mode
//! and `vm ssh` need, user mode's backend (passt, or slirp without it), and
//! the bridge, NAT, forwarding and DNS state.

use super::Network;
use crate::doctor::check;
use banger_api::{Check, CheckStatus};
use banger_sys::command::which;
use banger_sys::net::nft::Nft;

impl Network {
    pub fn checks(&self) -> Vec<Check> {
        let cfg = self.config();
        let mut out = vec![check(
            "network",
            CheckStatus::Pass,
            format!("new vms get --network {} by default", self.default_mode()),
            None,
        )];
        for (tool, pkg, why) in [
            ("nft", "nftables", "bridge mode's NAT"),
            ("dnsmasq", "dnsmasq-base", "bridge mode's .banger names"),
            ("ssh", "openssh-client", "banger vm ssh"),
        ] {
            if which(tool).is_none() {
                out.push(check(
                    tool,
                    CheckStatus::Warn,
                    format!("{tool} not found: needed for {why}"),
                    Some(&format!("apt-get install {pkg}")),
                ));
            }
        }
        out.push(match which("passt") {
            Some(_) => check(
                "user-net",
                CheckStatus::Pass,
                "passt serves user mode: guests reach the host's loopback only with --host-access",
                None,
            ),
            None => check(
                "user-net",
                CheckStatus::Warn,
                "passt not found: user mode falls back to QEMU's slirp, whose guests reach every service on the host's 127.0.0.1 (through 10.0.2.2)",
                Some("apt-get install passt"),
            ),
        });
        if !self.privileged() {
            out.push(check(
                "bridge",
                CheckStatus::Warn,
                "not root: bridge mode is unavailable, vms use --network user",
                Some("run bangerd as root for bridge networking"),
            ));
            return out;
        }
        let bridge = &cfg.bridge_name;
        if let Some(holder) = self.bridge_holder() {
            out.push(check(
                "bridge",
                CheckStatus::Warn,
                format!(
                    "{bridge} is another banger instance's ({holder}): this one's bridge vms are refused until it lets go"
                ),
                Some("give this instance its own bridge_name and bridge_subnet in config.toml"),
            ));
            return out;
        }
        let links = self.links();
        match links
            .exists(bridge)
            .map(|up| (up, links.ipv4_addresses(bridge).unwrap_or_default()))
        {
            Ok((true, addrs)) => {
                let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                out.push(check(
                    "bridge",
                    CheckStatus::Pass,
                    format!("{bridge} up with {}", addrs.join(", ")),
                    None,
                ));
            }
            Ok((false, _)) => out.push(check(
                "bridge",
                CheckStatus::Pass,
                format!(
                    "{bridge} is made by the first bridge-mode vm ({})",
                    self.subnet()
                ),
                None,
            )),
            Err(e) => out.push(check(
                "bridge",
                CheckStatus::Warn,
                crate::error::chain(&e),
                None,
            )),
        }
        out.push(match Nft::new(self.runner()).status(&cfg.nft_table) {
            Ok(st) if st.is_present() => check(
                "nat",
                CheckStatus::Pass,
                format!(
                    "nftables table ip {} masquerades {}",
                    cfg.nft_table,
                    self.subnet()
                ),
                None,
            ),
            Ok(_) => {
                // Gone behind our back (`nft flush ruleset`): the next
                // attach or detach installs it again.
                self.forget_installed_rules();
                check(
                    "nat",
                    CheckStatus::Pass,
                    format!("no table ip {} (added while bridge vms run)", cfg.nft_table),
                    None,
                )
            }
            Err(e) => check(
                "nat",
                CheckStatus::Warn,
                crate::error::chain(&e),
                Some("apt-get install nftables"),
            ),
        });
        out.push(match banger_sys::net::nft::ipv4_forwarding() {
            Ok(true) => check("forwarding", CheckStatus::Pass, "net.ipv4.ip_forward = 1", None),
            Ok(false) if cfg.allow_ip_forward => check(
                "forwarding",
                CheckStatus::Pass,
                "net.ipv4.ip_forward = 0; banger turns it on for the first bridge vm (allow_ip_forward = true)",
                None,
            ),
            Ok(false) => check(
                "forwarding",
                CheckStatus::Warn,
                "net.ipv4.ip_forward = 0: bridge vms cannot reach the outside",
                Some("set allow_ip_forward = true in config.toml, or sysctl -w net.ipv4.ip_forward=1"),
            ),
            Err(e) => check("forwarding", CheckStatus::Warn, crate::error::chain(&e), None),
        });
        let gateway = self.gateway();
        let dns = match self.dns_server().running(&self.dnsmasq_config()) {
            Some(pid) => format!(
                "dnsmasq (pid {pid}) answers *.{} on {gateway}",
                cfg.dns_suffix
            ),
            None => format!("dnsmasq starts with the first bridge vm, on {gateway}"),
        };
        out.push(check(
            "dns",
            CheckStatus::Pass,
            dns,
            Some(&format!(
                "for host lookups: resolvectl dns {bridge} {gateway} && resolvectl domain {bridge} '~{}' (systemd-resolved), or `banger vm ssh-config >> ~/.ssh/config`",
                cfg.dns_suffix
            )),
        ));
        out
    }
}
