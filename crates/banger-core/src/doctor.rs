//! `banger doctor`: what works on this host and what does not, one check
//! per line with a fix for every warning and failure.

use crate::engine::accel::{self, KvmStatus};
use crate::manager::Manager;
use banger_api::{Check, CheckStatus, DoctorReport};
use banger_sys::command::{Cmd, which};

/// How a `debian` image build would run for this user, or why it cannot.
fn debian_build_check() -> Check {
    match banger_image::debian_installer() {
        Ok((installer, notes)) if notes.is_empty() => check(
            "debian-build",
            CheckStatus::Pass,
            format!("the debian preset builds with {installer}"),
            None,
        ),
        Ok((installer, notes)) => check(
            "debian-build",
            CheckStatus::Warn,
            format!(
                "the debian preset builds with {installer}: {}",
                notes.join("; ")
            ),
            None,
        ),
        Err(err) => check(
            "debian-build",
            CheckStatus::Fail,
            format!("the debian preset cannot be built here: {err}"),
            Some("see the message; or build the image as root and `banger image register` it"),
        ),
    }
}

fn check(name: &str, status: CheckStatus, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        fix: fix.map(Into::into),
    }
}

impl Manager {
    pub async fn doctor(&self) -> DoctorReport {
        let mut checks = Vec::new();
        let qemu = self.config.qemu_bin.to_string_lossy().into_owned();
        match self.runner.run(&Cmd::new(&qemu).arg("--version")) {
            Ok(out) => {
                let v = out.stdout_lossy().lines().next().unwrap_or("").to_string();
                checks.push(check("engine", CheckStatus::Pass, v, None));
            }
            Err(e) => checks.push(check(
                "engine",
                CheckStatus::Fail,
                crate::error::chain(&e),
                Some("apt-get install qemu-system-x86"),
            )),
        }
        checks.push(self.kvm_check().await);
        match banger_sys::process::tsc_khz() {
            Some(khz) => checks.push(check(
                "tsc",
                CheckStatus::Pass,
                format!("host TSC {khz} kHz (passed to TCG guests as tsc_early_khz)"),
                None,
            )),
            None => checks.push(check(
                "tsc",
                CheckStatus::Warn,
                "cannot read the host TSC rate from /proc/cpuinfo",
                Some("TCG guests may hang at boot; use KVM"),
            )),
        }
        for (tool, pkg) in [
            ("qemu-img", "qemu-utils"),
            ("mkfs.ext4", "e2fsprogs"),
            ("resize2fs", "e2fsprogs"),
        ] {
            match which(tool) {
                Some(p) => checks.push(check(
                    tool,
                    CheckStatus::Pass,
                    p.display().to_string(),
                    None,
                )),
                None => checks.push(check(
                    tool,
                    CheckStatus::Fail,
                    format!("{tool} not found in PATH"),
                    Some(&format!("apt-get install {pkg}")),
                )),
            }
        }
        for (tool, pkg) in [("apt-get", "apt"), ("dpkg-deb", "dpkg")] {
            if which(tool).is_none() {
                checks.push(check(
                    tool,
                    CheckStatus::Warn,
                    format!("{tool} not found: image build cannot fetch Debian packages"),
                    Some(&format!("install {pkg}, or use `banger image register`")),
                ));
            }
        }
        match self.agent_bin() {
            Ok(p) => checks.push(check(
                "agent",
                CheckStatus::Pass,
                p.display().to_string(),
                None,
            )),
            Err(e) => checks.push(check(
                "agent",
                CheckStatus::Warn,
                e.to_string(),
                Some("run the README's setup command"),
            )),
        }
        checks.extend(self.network_checks());
        checks.push(self.disk_check());
        checks.extend(self.image_checks());
        checks.push(check(
            "daemon",
            CheckStatus::Pass,
            format!("answering on {}", self.paths.socket().display()),
            None,
        ));
        DoctorReport { checks }
    }

    async fn kvm_check(&self) -> Check {
        let kernel = self.store.images().ok().and_then(|imgs| {
            imgs.into_iter().find_map(|i| {
                ["vmlinux", "bzImage"]
                    .iter()
                    .map(|k| std::path::Path::new(&i.dir).join(k))
                    .find(|p| p.exists())
            })
        });
        let status = match (accel::kvm_device_status(), kernel) {
            (Some(s), _) => s,
            (None, Some(k)) => self.accel(&k).await.1,
            (None, None) => {
                return check(
                    "kvm",
                    CheckStatus::Warn,
                    "/dev/kvm opens; not probed yet (no image to boot)",
                    Some("build an image: banger image build"),
                );
            }
        };
        let mode = format!("accel = {:?}", self.config.accel).to_lowercase();
        match status {
            KvmStatus::Usable => check(
                "kvm",
                CheckStatus::Pass,
                format!("/dev/kvm boots a stock kernel ({mode})"),
                None,
            ),
            KvmStatus::Unusable { reason } => check(
                "kvm",
                CheckStatus::Warn,
                format!("/dev/kvm is unusable: {reason} ({mode})"),
                Some("guests run under TCG (software, slower); use a host with full KVM for speed"),
            ),
            KvmStatus::NotAccessible { reason } => check(
                "kvm",
                CheckStatus::Warn,
                reason,
                Some("guests run under TCG until then"),
            ),
            KvmStatus::Absent => check(
                "kvm",
                CheckStatus::Warn,
                format!("/dev/kvm is absent ({mode})"),
                Some("guests run under TCG (software, slower); enable virtualization for speed"),
            ),
        }
    }

    /// Bridge, NAT, forwarding and DNS state, and the tools behind them.
    fn network_checks(&self) -> Vec<Check> {
        use banger_sys::net::link::{Links, NetlinkLinks};
        let mut out = Vec::new();
        let mode = self.default_network();
        out.push(check(
            "network",
            CheckStatus::Pass,
            format!("new vms get --network {} by default", mode.as_str()),
            None,
        ));
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
        out.push(debian_build_check());
        if banger_sys::process::euid() != 0 {
            out.push(check(
                "bridge",
                CheckStatus::Warn,
                "not root: bridge mode is unavailable, vms use --network user",
                Some("run bangerd as root for bridge networking"),
            ));
            return out;
        }
        let bridge = &self.config.bridge_name;
        match NetlinkLinks::new().and_then(|l| {
            Ok((
                l.exists(bridge)?,
                l.ipv4_addresses(bridge).unwrap_or_default(),
            ))
        }) {
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
                    self.config.bridge_subnet
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
        let nat = banger_sys::net::nft::Nft::new(&*self.runner).status(&self.config.nft_table);
        match nat {
            Ok(st) if st.is_present() => out.push(check(
                "nat",
                CheckStatus::Pass,
                format!(
                    "nftables table ip {} masquerades {}",
                    self.config.nft_table, self.config.bridge_subnet
                ),
                None,
            )),
            Ok(_) => out.push(check(
                "nat",
                CheckStatus::Pass,
                format!(
                    "no table ip {} (added while bridge vms run)",
                    self.config.nft_table
                ),
                None,
            )),
            Err(e) => out.push(check(
                "nat",
                CheckStatus::Warn,
                crate::error::chain(&e),
                Some("apt-get install nftables"),
            )),
        }
        match banger_sys::net::nft::ipv4_forwarding() {
            Ok(true) => out.push(check("forwarding", CheckStatus::Pass, "net.ipv4.ip_forward = 1", None)),
            Ok(false) if self.config.allow_ip_forward => out.push(check("forwarding", CheckStatus::Pass, "net.ipv4.ip_forward = 0; banger turns it on for the first bridge vm (allow_ip_forward = true)", None)),
            Ok(false) => out.push(check("forwarding", CheckStatus::Warn, "net.ipv4.ip_forward = 0: bridge vms cannot reach the outside", Some("set allow_ip_forward = true in config.toml, or sysctl -w net.ipv4.ip_forward=1"))),
            Err(e) => out.push(check("forwarding", CheckStatus::Warn, crate::error::chain(&e), None)),
        }
        let dns_pid = self.paths.runtime_dir.join("dns/dnsmasq.pid");
        let gateway = crate::net::Subnet::parse(&self.config.bridge_subnet)
            .map(|s| s.gateway().to_string())
            .unwrap_or_default();
        let dns = match banger_sys::net::dnsmasq::running(&dns_pid) {
            Some(pid) => format!(
                "dnsmasq (pid {pid}) answers *.{} on {gateway}",
                self.config.dns_suffix
            ),
            None => format!("dnsmasq starts with the first bridge vm, on {gateway}"),
        };
        out.push(check(
            "dns",
            CheckStatus::Pass,
            dns,
            Some(&format!(
                "for host lookups: resolvectl dns {bridge} {gateway} && resolvectl domain {bridge} '~{}' (systemd-resolved), or `banger vm ssh-config >> ~/.ssh/config`",
                self.config.dns_suffix
            )),
        ));
        out
    }

    fn disk_check(&self) -> Check {
        let dir = &self.paths.state_dir;
        match banger_sys::process::free_bytes(dir) {
            Ok(free) => {
                let gib = free as f64 / (1u64 << 30) as f64;
                let detail = format!("{gib:.1} GiB free in {}", dir.display());
                if free < 512 << 20 {
                    check(
                        "disk",
                        CheckStatus::Fail,
                        detail,
                        Some("free some space: each VM needs its overlay and work disk"),
                    )
                } else if free < 2 << 30 {
                    check(
                        "disk",
                        CheckStatus::Warn,
                        detail,
                        Some("less than 2 GiB free: VMs may run out of disk"),
                    )
                } else {
                    check("disk", CheckStatus::Pass, detail, None)
                }
            }
            Err(e) => check(
                "disk",
                CheckStatus::Warn,
                format!("cannot stat {}: {e}", dir.display()),
                None,
            ),
        }
    }

    fn image_checks(&self) -> Vec<Check> {
        let images = match self.store.images() {
            Ok(i) => i,
            Err(e) => {
                return vec![check(
                    "images",
                    CheckStatus::Fail,
                    crate::error::chain(&e),
                    None,
                )];
            }
        };
        if images.is_empty() {
            return vec![check(
                "images",
                CheckStatus::Warn,
                "no images yet",
                Some("banger image build --preset minimal"),
            )];
        }
        images
            .into_iter()
            .map(|img| {
                let name = format!("image {}", img.name);
                match banger_image::verify(std::path::Path::new(&img.dir)) {
                    Ok(files) => {
                        let bad: Vec<String> = files
                            .iter()
                            .filter(|f| !f.is_ok())
                            .map(|f| f.to_string())
                            .collect();
                        if bad.is_empty() {
                            check(
                                &name,
                                CheckStatus::Pass,
                                format!("{} files match their sha256 fingerprints", files.len()),
                                None,
                            )
                        } else {
                            check(
                                &name,
                                CheckStatus::Fail,
                                bad.join("; "),
                                Some(&format!(
                                    "rebuild it: banger image build --force --name {}",
                                    img.name
                                )),
                            )
                        }
                    }
                    Err(e) => check(
                        &name,
                        CheckStatus::Fail,
                        crate::error::chain(&e),
                        Some("rebuild or re-register the image"),
                    ),
                }
            })
            .collect()
    }
}
