//! The network's part of `banger doctor`'s leak lines: this instance's taps
//! that no VM and no pool holds, and the shared bridge side (NAT table,
//! dnsmasq, bridge) still up with no bridge VM running.

use super::Network;
use crate::vm::leaks::leak_line;
use banger_api::Check;
use banger_sys::net::nft::Nft;

impl Network {
    pub fn leaks(&self, fix: bool) -> Vec<Check> {
        if !self.privileged() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let (held, idle) = self.held_taps();
        let links = self.links();
        for link in links.list(self.tap_prefix()).unwrap_or_default() {
            if held.contains(&link.name) || !self.owns(&link) {
                continue;
            }
            let what = format!("tap {} belongs to no vm", link.name);
            let fixed = fix.then(|| {
                links
                    .delete(&link.name)
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
            out.push(leak_line(what, fixed));
        }
        if !idle {
            return out;
        }
        let cfg = self.config();
        let mut shared = Vec::new();
        if links.exists(&cfg.bridge_name).unwrap_or(false) && !self.bridge_used_elsewhere() {
            shared.push(format!("bridge {}", cfg.bridge_name));
        }
        if let Some(pid) = self.dns_server().running(&self.dnsmasq_config()) {
            shared.push(format!("dnsmasq (pid {pid})"));
        }
        if Nft::new(self.runner())
            .status(&cfg.nft_table)
            .is_ok_and(|s| s.is_present())
        {
            shared.push(format!("nftables table ip {}", cfg.nft_table));
        }
        if !shared.is_empty() {
            let what = format!("{} up with no bridge vm running", shared.join(", "));
            let fixed = fix.then(|| {
                self.remove_shared();
                Ok(())
            });
            out.push(leak_line(what, fixed));
        }
        out
    }
}
