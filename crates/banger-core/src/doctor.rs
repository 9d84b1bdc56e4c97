//! `banger doctor`: what works on this host and what does not, one check
//! per line with a fix for every warning and failure.

use crate::engine::Engines;
use crate::images::Images;
use crate::net::Network;
use banger_api::paths::Paths;
use banger_api::{Check, CheckStatus, DoctorReport};
use banger_sys::command::which;
use std::sync::Arc;

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

pub(crate) fn check(
    name: &str,
    status: CheckStatus,
    detail: impl Into<String>,
    fix: Option<&str>,
) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        fix: fix.map(Into::into),
    }
}

/// What runs as root here, and why.
fn privilege_check() -> Check {
    if banger_sys::process::euid() != 0 {
        return check(
            "privilege",
            CheckStatus::Pass,
            format!(
                "nothing runs as root: bangerd, QEMU and image builds run as uid {}",
                banger_sys::process::euid()
            ),
            None,
        );
    }
    check(
        "privilege",
        CheckStatus::Warn,
        format!(
            "runs as root: bangerd (taps, the bridge, nftables), QEMU (it opens its tap and disks itself), \
             image builds; dnsmasq drops to {} after binding",
            crate::net::network::DNS_USER
        ),
        Some("for a rootless setup run bangerd as your own user: VMs then use --network user"),
    )
}

/// `banger doctor`: asks each service for its lines.
pub struct Doctor {
    paths: Paths,
    engines: Engines,
    network: Arc<Network>,
    images: Arc<Images>,
}

impl Doctor {
    pub fn new(
        paths: Paths,
        engines: Engines,
        network: Arc<Network>,
        images: Arc<Images>,
    ) -> Doctor {
        Doctor {
            paths,
            engines,
            network,
            images,
        }
    }

    pub async fn report(&self) -> DoctorReport {
        let mut checks = Vec::new();
        let kernel = self.images.any_kernel();
        for engine in self.engines.all() {
            checks.extend(engine.checks(kernel.as_deref()).await);
        }
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
        match self.images.agent_bin() {
            Ok(p) => checks.push(check(
                "agent",
                CheckStatus::Pass,
                p.display().to_string(),
                None,
            )),
            Err(e) => checks.push(check(
                "agent",
                CheckStatus::Warn,
                crate::error::chain(&e),
                Some("run the README's setup command"),
            )),
        }
        let mut net = self.network.checks();
        // The debian build line sits with the tools, after the network's.
        let at = net
            .iter()
            .position(|c| c.name == "bridge")
            .unwrap_or(net.len());
        net.insert(at, debian_build_check());
        checks.extend(net);
        checks.push(privilege_check());
        checks.push(self.disk_check());
        checks.extend(self.images.checks());
        checks.push(check(
            "daemon",
            CheckStatus::Pass,
            format!("answering on {}", self.paths.socket().display()),
            None,
        ));
        DoctorReport { checks }
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
}
