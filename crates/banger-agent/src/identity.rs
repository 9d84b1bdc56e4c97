//! Becoming a machine of its own after a restore. A guest restored from a
//! snapshot (`vm restore`, `vm create --from-snapshot`, `vm fork`) wakes up
//! with the snapshot's clock, RNG state, hostname, MAC, address and sshd
//! host key, shared with every other VM made from the same snapshot. The
//! host sends an [`IdentityRequest`] right after its agent answers; this
//! applies it, in order:
//!
//! 1. check it (a hostname the kernel and `/etc/hosts` take, the entropy's
//!    size): a bad request changes nothing;
//! 2. step `CLOCK_REALTIME` to the host's time (it lags by the snapshot's
//!    age: the guest's clock stood still while it was saved);
//! 3. mix the host's random bytes into the kernel's pool and reseed the
//!    CRNG from it, so forks of one snapshot stop producing the same
//!    random numbers (QEMU 7.2's `vmgenid` is not visible on `-M microvm`,
//!    see ARCHITECTURE.md, so this is the only reseed); then a new boot id
//!    ([`new_boot_id`]), since programs (journald, for one) take the same
//!    boot id for the same boot;
//! 4. the hostname (`sethostname`, `/etc/hostname`, `/etc/hosts`);
//! 5. the network: the NIC moved to the new MAC and address (`net.rs`,
//!    [`crate::net::reconfigure`]), remembered for the next restore;
//! 6. the host's new sshd host key installed when the image has sshd
//!    (`sshd.rs`); failing that is a warning, not an error: the guest is
//!    usable without it;
//! 7. the host user's git identity now (`git.rs`): a warm snapshot was
//!    made with the identity of its day; failing is a warning too.
//!
//! Only the guest's init applies anything: the same agent serves tests on
//! a host, whose clock, RNG and hostname are not its to change.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use banger_proto::{IdentityReport, IdentityRequest, MAX_IDENTITY_ENTROPY};

use crate::Agent;
use crate::console::{chain, step};

/// Where the kernel shows its boot id.
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// The file a restored guest's new boot id is in, mounted over [`BOOT_ID`].
pub const BOOT_ID_FILE: &str = "/run/banger/boot_id";

/// Fewest entropy bytes a request must carry (a 128-bit reseed).
pub const MIN_ENTROPY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("hostname {0:?} is not 1-63 letters, digits and inner hyphens")]
    BadHostname(String),
    #[error("{0} entropy bytes: expected {MIN_ENTROPY} to {MAX_IDENTITY_ENTROPY}")]
    BadEntropy(usize),
    #[error("the host's time has {0} nanoseconds")]
    BadTime(u32),
    #[error("the sshd host key is not an Ed25519 OpenSSH key pair")]
    BadHostKey,
    #[error("stepping the clock")]
    Clock(#[source] std::io::Error),
    #[error("reseeding the random number generator")]
    Entropy(#[source] std::io::Error),
    #[error("setting the hostname")]
    Hostname(#[source] std::io::Error),
    #[error("moving the network to its new identity")]
    Network(#[source] crate::net::NetError),
}

/// Step 1.
pub fn check(req: &IdentityRequest) -> Result<(), IdentityError> {
    let name = req.hostname.as_str();
    let label_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !label_ok {
        return Err(IdentityError::BadHostname(name.to_string()));
    }
    if !(MIN_ENTROPY..=MAX_IDENTITY_ENTROPY).contains(&req.entropy.len()) {
        return Err(IdentityError::BadEntropy(req.entropy.len()));
    }
    if req.time.nanos >= 1_000_000_000 {
        return Err(IdentityError::BadTime(req.time.nanos));
    }
    if req
        .ssh_host_key
        .as_ref()
        .is_some_and(|k| !k.is_ed25519_pair())
    {
        return Err(IdentityError::BadHostKey);
    }
    Ok(())
}

/// Milliseconds from `now` to the host's time in `req`.
pub fn step_ms(req: &IdentityRequest, now: SystemTime) -> i64 {
    let guest = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    let host = req.time.secs * 1000 + i64::from(req.time.nanos / 1_000_000);
    host - guest
}

/// Steps 1-6 on the live guest; refuses nothing but applies nothing unless
/// this process is the guest's init.
pub async fn apply(agent: &Agent, req: IdentityRequest) -> Result<IdentityReport, IdentityError> {
    check(&req)?;
    let mut report = IdentityReport {
        clock_step_ms: step_ms(&req, SystemTime::now()),
        ..Default::default()
    };
    if !crate::is_init() {
        report
            .warnings
            .push("not the guest's init: nothing applied".into());
        return Ok(report);
    }
    step(
        &format!("identity: clock stepped {} ms", report.clock_step_ms),
        || {
            banger_sys::guest::set_wall_clock(req.time.secs, req.time.nanos)
                .map_err(IdentityError::Clock)
        },
    )?;
    step("identity: reseeded the RNG", || {
        banger_sys::guest::add_entropy_and_reseed(&req.entropy).map_err(IdentityError::Entropy)
    })?;
    if let Err(e) = step("identity: boot id", || {
        let mut random = [0u8; 16];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        new_boot_id(Path::new(BOOT_ID_FILE), Path::new(BOOT_ID), random)
    }) {
        report
            .warnings
            .push(format!("boot id not replaced: {}", chain(&e)));
    }
    step(&format!("identity: hostname {}", req.hostname), || {
        rustix::system::sethostname(req.hostname.as_bytes())
            .map_err(std::io::Error::from)
            .and_then(|()| crate::setup::write_hostname_files(Path::new("/"), &req.hostname))
            .map_err(IdentityError::Hostname)
    })?;
    if let Some(new) = &req.network {
        let mut current = agent.network.lock().unwrap_or_else(|e| e.into_inner());
        let mut rtnl = crate::net::Netlink::open().map_err(IdentityError::Network)?;
        crate::net::reconfigure(
            &mut rtnl,
            Path::new(crate::net::SYS_CLASS_NET),
            Path::new("/"),
            current.as_ref(),
            new,
        )
        .map_err(IdentityError::Network)?;
        *current = Some(new.clone());
    }
    if let Some(key) = &req.ssh_host_key {
        match step("identity: sshd host key", || {
            crate::sshd::Sshd::guest().install_host_key(key)
        }) {
            Ok(installed) => report.ssh_host_key = installed,
            Err(e) => report
                .warnings
                .push(format!("sshd host key not replaced: {}", chain(&e))),
        }
    }
    if let Err(e) = git_identity(&req.git_identity).await {
        report
            .warnings
            .push(format!("git identity not set: {}", chain(&e)));
    }
    Ok(report)
}

/// Step 3, the boot id. The kernel makes one per boot and offers no way to
/// change it, so `random` becomes a version 4 UUID in `file` (in `/run`,
/// RAM: a restart's boot gets the kernel's own again), bind-mounted over
/// `shown`. A guest restored again finds the mount in place and the file
/// rewritten is what readers see.
pub fn new_boot_id(file: &Path, shown: &Path, random: [u8; 16]) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(file, uuid_v4(random))?;
    if !same_file(file, shown) {
        rustix::mount::mount_bind(file, shown)?;
    }
    Ok(())
}

/// `random` as a version 4 UUID, as the kernel prints one, with a newline.
pub fn uuid_v4(mut random: [u8; 16]) -> String {
    random[6] = (random[6] & 0x0f) | 0x40;
    random[8] = (random[8] & 0x3f) | 0x80;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}\n",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Whether `a` and `b` are one file (`b` is `a` bind-mounted, say): two
/// `stat`s, where reading `/proc/self/mountinfo` cost a just-restored TCG
/// guest ~10 ms.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Step 7: the file read and written here (a new thread would cost a
/// just-restored TCG guest ~20 ms); a `git config` run, which blocks, off
/// the runtime's thread.
async fn git_identity(identity: &[String]) -> std::io::Result<()> {
    if identity.is_empty() {
        return Ok(());
    }
    let start = std::time::Instant::now();
    let did = match crate::git::apply(Path::new("/"), Path::new("/root"), identity)? {
        crate::git::Applied::Done(did) => did,
        edits => tokio::task::spawn_blocking(move || edits.finish())
            .await
            .map_err(std::io::Error::other)??,
    };
    crate::console::log(format_args!(
        "identity: git identity {did} ({})",
        crate::console::Millis::since(start)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::WallTime;
    use std::time::Duration;

    fn request() -> IdentityRequest {
        IdentityRequest {
            vm_name: "try-1".into(),
            hostname: "try-1".into(),
            network: None,
            entropy: vec![7; 64],
            time: WallTime {
                secs: 1_800_000_000,
                nanos: 500_000_000,
            },
            ssh_host_key: Some(banger_proto::SshHostKey {
                private:
                    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----\n"
                        .into(),
                public: "ssh-ed25519 AAAAC3Nz".into(),
            }),
            git_identity: vec![],
        }
    }

    #[test]
    fn a_host_key_that_is_not_an_ed25519_pair_is_refused() {
        for (private, public) in [
            ("not a key", "ssh-ed25519 AAAA"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----\n", "ssh-rsa AAAA"),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\n",
                "ssh-ed25519 AAAA\nssh-ed25519 BBBB",
            ),
        ] {
            let req = IdentityRequest {
                ssh_host_key: Some(banger_proto::SshHostKey {
                    private: private.into(),
                    public: public.into(),
                }),
                ..request()
            };
            assert!(
                matches!(check(&req), Err(IdentityError::BadHostKey)),
                "{public:?}"
            );
        }
    }

    #[test]
    fn a_boot_id_is_a_version_4_uuid_like_the_kernels() {
        let id = uuid_v4([0xff; 16]);
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff\n");
        let id = uuid_v4([0; 16]);
        assert_eq!(id, "00000000-0000-4000-8000-000000000000\n");
        let kernel = std::fs::read_to_string(BOOT_ID).unwrap_or(id.clone());
        assert_eq!(kernel.len(), id.len(), "{kernel:?}");
        assert_eq!(kernel.matches('-').count(), 4);
    }

    #[test]
    fn one_file_is_told_from_another() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "x").unwrap();
        std::fs::write(&b, "x").unwrap();
        assert!(same_file(&a, &a));
        assert!(!same_file(&a, &b));
        assert!(!same_file(&a, &dir.path().join("missing")));
        std::fs::hard_link(&a, dir.path().join("c")).unwrap();
        assert!(same_file(&a, &dir.path().join("c")));
    }

    #[test]
    fn a_plain_request_passes() {
        check(&request()).unwrap();
    }

    #[test]
    fn hostnames_the_kernel_and_hosts_file_would_mangle_are_refused() {
        for bad in ["", "-a", "a-", "a b", "a.b", "a\nb", &"x".repeat(64)] {
            let req = IdentityRequest {
                hostname: bad.into(),
                ..request()
            };
            assert!(
                matches!(check(&req), Err(IdentityError::BadHostname(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn too_little_or_too_much_entropy_is_refused() {
        for n in [0, MIN_ENTROPY - 1, MAX_IDENTITY_ENTROPY + 1] {
            let req = IdentityRequest {
                entropy: vec![1; n],
                ..request()
            };
            assert!(matches!(check(&req), Err(IdentityError::BadEntropy(_))));
        }
    }

    #[test]
    fn the_step_is_how_far_the_guest_lags() {
        let lagging = UNIX_EPOCH + Duration::from_millis(1_800_000_000_500 - 90_000);
        assert_eq!(step_ms(&request(), lagging), 90_000);
        let ahead = UNIX_EPOCH + Duration::from_millis(1_800_000_000_500 + 20);
        assert_eq!(step_ms(&request(), ahead), -20);
    }

    #[tokio::test]
    async fn off_the_guest_nothing_is_applied() {
        struct NoPower;
        impl crate::Power for NoPower {
            fn shutdown(&self, _reboot: bool) {}
        }
        let agent = Agent::new(std::sync::Arc::new(NoPower));
        let report = apply(&agent, request()).await.unwrap();
        assert_eq!(report.warnings, ["not the guest's init: nothing applied"]);
    }
}
