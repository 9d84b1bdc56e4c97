//! Identity: a VM restored from a snapshot (`vm restore`, `vm create
//! --from-snapshot`, `vm fork`) is a new machine to the network and to
//! cryptography. The host side is already its own (its name, MAC, lease,
//! tap and DNS name come from the other capabilities' `prepare`), but the
//! guest resumes with the snapshot's hostname, MAC, address, clock, RNG
//! state and sshd host key. Right after its agent answers, this sends the
//! agent an identity request built from this boot's guest config (what a
//! cold boot would have read from the config drive), 64 bytes from the
//! host's RNG and the host's time; the agent applies it (`banger-agent`'s
//! `identity.rs` says how) or the restore fails. sshd's new host key is
//! made here with `ssh-keygen` (milliseconds, against half a second for
//! the guest under TCG; one is kept made ahead, so a restore does not wait
//! the ~10 ms for it) and sent along; the VM's pinned host key
//! (`vm/ssh.rs`) is forgotten first, and the new one pinned once the agent
//! says sshd has it (a guest without sshd pins nothing).
//!
//! An agent too old to know the request (a snapshot taken before it
//! existed) leaves the guest as it was, with a warning in the log.

use super::{Capability, Ctx};
use crate::agent::{AgentConn, AgentError};
use crate::error::Error;
use crate::store::ImageRecord;
use crate::vm::ssh::{KNOWN_HOSTS, host_key_alias};
use banger_proto::{GuestConfig, IdentityRequest, SshHostKey, WallTime};
use banger_sys::command::{Cmd, Runner};
use futures::future::BoxFuture;
use rand::RngCore;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Random bytes sent for the guest's reseed.
pub const ENTROPY_BYTES: usize = 64;

pub struct Identity {
    runner: Arc<dyn Runner>,
    /// Where `ssh-keygen` writes (in the daemon's owner-only runtime dir;
    /// emptied at daemon start: a daemon killed while a key was being
    /// made leaves its directory).
    key_dir: PathBuf,
    /// Images (name and build time) whose guests said they have no sshd:
    /// no host key is made for them (~7 ms of a restore).
    no_sshd: std::sync::Mutex<std::collections::HashSet<String>>,
    /// A host key made ahead for the next restore (daemon memory only),
    /// made again after each use.
    spare: Arc<std::sync::Mutex<Option<SshHostKey>>>,
    /// A spare is being made: one at a time (a fork of 32 takes 32 keys,
    /// and needs one spare after, not 32).
    making_spare: Arc<std::sync::atomic::AtomicBool>,
}

impl Identity {
    pub fn new(runner: Arc<dyn Runner>, key_dir: PathBuf) -> Identity {
        Identity {
            runner,
            key_dir,
            no_sshd: Default::default(),
            spare: Default::default(),
            making_spare: Default::default(),
        }
    }

    fn no_sshd(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.no_sshd.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new host key: the spare, or one made now when there is none; a
    /// spare is then made in the background. `None` (logged) when
    /// `ssh-keygen` fails: the guest then keeps the key it has.
    fn host_key(&self, vm: &str) -> Option<SshHostKey> {
        let spare = lock(&self.spare).take();
        let key = spare.map_or_else(|| make_host_key(&*self.runner, &self.key_dir), Ok);
        let making = self.making_spare.clone();
        if !making.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let (runner, spare, dir) = (
                self.runner.clone(),
                self.spare.clone(),
                self.key_dir.clone(),
            );
            std::thread::spawn(move || {
                let wanted = lock(&spare).is_none();
                let made = wanted.then(|| make_host_key(&*runner, &dir).ok()).flatten();
                // Done before the spare shows: whoever takes it may start the next.
                making.store(false, std::sync::atomic::Ordering::Release);
                if let Some(key) = made {
                    lock(&spare).get_or_insert(key);
                }
            });
        }
        key.map_err(|e| tracing::warn!(vm, error = %e, "cannot make an sshd host key: the guest keeps the snapshot's"))
            .ok()
    }
}

/// How [`Identity::no_sshd`] names an image.
fn image_key(image: &ImageRecord) -> String {
    format!("{} {}", image.name, image.created_at)
}

/// Whether `image` may have sshd: not if a restored guest of it said it has
/// none, nor if its manifest lists what its build installed without
/// `openssh-server`. An image registered from a root filesystem lists
/// nothing and may.
fn may_have_sshd(image: &ImageRecord, no_sshd: &std::collections::HashSet<String>) -> bool {
    if no_sshd.contains(&image_key(image)) {
        return false;
    }
    serde_json::from_str::<serde_json::Value>(&image.manifest)
        .ok()
        .and_then(|m| m.get("installed").cloned())
        .is_none_or(|installed| installed.get("openssh-server").is_some())
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new Ed25519 key pair, made by `ssh-keygen` in a directory of its own
/// under `dir` and read back.
fn make_host_key(runner: &dyn Runner, dir: &Path) -> Result<SshHostKey, String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("key.")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(dir)
        .map_err(|e| format!("cannot make a private directory in {}: {e}", dir.display()))?;
    let private = dir.path().join("key");
    let public = dir.path().join("key.pub");
    runner
        .run(
            &Cmd::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
                .arg(&private),
        )
        .map_err(|e| e.to_string())?;
    let read = |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| e.to_string());
    Ok(SshHostKey {
        private: read(&private)?,
        public: read(&public)?.trim().to_string(),
    })
}

/// The known-hosts line `vm ssh` checks the guest's host key against.
pub fn known_hosts_line(vm_id: &str, public: &str) -> String {
    format!("{} {}\n", host_key_alias(vm_id), public.trim())
}

/// The request for a guest given `guest` at this boot, with `entropy` and
/// the host's time `now`.
pub fn request(
    guest: &GuestConfig,
    entropy: Vec<u8>,
    now: SystemTime,
    ssh_host_key: Option<SshHostKey>,
) -> IdentityRequest {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    IdentityRequest {
        vm_name: guest.vm_name.clone(),
        hostname: if guest.hostname.is_empty() {
            guest.vm_name.clone()
        } else {
            guest.hostname.clone()
        },
        network: guest.network.clone(),
        entropy,
        time: WallTime {
            secs: since.as_secs() as i64,
            nanos: since.subsec_nanos(),
        },
        ssh_host_key,
        git_identity: guest.git_identity.clone(),
    }
}

impl Capability for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn sweep(&self, _live: &[super::Live<'_>]) {
        match std::fs::remove_dir_all(&self.key_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %self.key_dir.display(), error = %e, "cannot empty the host key directory");
            }
            _ => {}
        }
    }

    /// A guest's first boot gets its sshd host key from the host, in the
    /// config drive (see [`GuestConfig::ssh_host_key`]), taken like a
    /// restore's from the spare. None on a restore (its identity request
    /// brings one), once a key is pinned (the guest has one), or for an
    /// image without sshd.
    fn prepare<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        plan: &'a mut super::BootPlan,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if !plan.restore
                && !ctx.dir.file(KNOWN_HOSTS).exists()
                && may_have_sshd(ctx.image, &self.no_sshd())
            {
                plan.guest.ssh_host_key = self.host_key(&ctx.vm.name);
            }
            Ok(())
        })
    }

    fn restored<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        guest: &'a GuestConfig,
        agent: &'a AgentConn,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let known = ctx.dir.file(KNOWN_HOSTS);
            match std::fs::remove_file(&known) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("cannot remove {}", known.display()))(e));
                }
                _ => {}
            }
            let mut entropy = vec![0u8; ENTROPY_BYTES];
            rand::rngs::OsRng.fill_bytes(&mut entropy);
            let image = image_key(ctx.image);
            let key = if self.no_sshd().contains(&image) {
                None
            } else {
                self.host_key(&ctx.vm.name)
            };
            let public = key.as_ref().map(|k| k.public.clone());
            match agent
                .identity(request(guest, entropy, SystemTime::now(), key))
                .await
            {
                Ok(report) => {
                    if public.is_some() && !report.ssh_host_key && report.warnings.is_empty() {
                        self.no_sshd().insert(image);
                    }
                    if let Some(public) = public.filter(|_| report.ssh_host_key) {
                        let tmp = ctx.dir.file(".known_hosts.tmp");
                        std::fs::write(&tmp, known_hosts_line(&ctx.vm.id, &public))
                            .and_then(|()| std::fs::rename(&tmp, &known))
                            .map_err(Error::io(format!("cannot write {}", known.display())))?;
                    }
                    // The guest's words: logged, never acted on.
                    tracing::info!(
                        vm = %ctx.vm.name,
                        clock_step_ms = report.clock_step_ms,
                        ssh_host_key = report.ssh_host_key,
                        warnings = ?report.warnings,
                        "guest took its identity"
                    );
                    Ok(())
                }
                Err(AgentError::Remote { code, message }) if code == "bad_request" => {
                    tracing::warn!(
                        vm = %ctx.vm.name,
                        agent = %message,
                        "the guest's agent predates identity requests: it keeps the snapshot's hostname, addresses, clock and RNG state"
                    );
                    Ok(())
                }
                Err(e) => Err(Error::Guest(format!(
                    "cannot give the restored guest its identity: {}",
                    crate::error::chain(&e)
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::GuestNetwork;
    use std::time::Duration;

    #[test]
    fn the_request_carries_this_boots_name_network_and_the_hosts_time() {
        let guest = GuestConfig {
            version: 1,
            vm_name: "try-2".into(),
            hostname: "try-2".into(),
            authorized_keys: vec!["ssh-ed25519 AAAA".into()],
            network: Some(GuestNetwork {
                mac: "52:54:00:00:00:02".into(),
                address: "172.30.0.12/24".into(),
                ..Default::default()
            }),
            git_identity: vec!["user.name".into(), "Ann".into()],
            ssh_host_key: None,
        };
        let now = UNIX_EPOCH + Duration::new(1_800_000_000, 250);
        let req = request(&guest, vec![9; ENTROPY_BYTES], now, None);
        assert_eq!(req.hostname, "try-2");
        assert_eq!(req.network, guest.network);
        assert_eq!(req.git_identity, guest.git_identity);
        assert_eq!(
            req.time,
            WallTime {
                secs: 1_800_000_000,
                nanos: 250
            }
        );
        assert_eq!(req.entropy.len(), ENTROPY_BYTES);
    }

    /// The key `identity` puts in the config of `vm`'s boot (a restore's
    /// with `restore`), with a spare ready to take.
    async fn first_boot_key(
        identity: &Identity,
        (vm, image, dir): (&crate::store::VmRecord, &ImageRecord, &crate::layout::VmDir),
        restore: bool,
    ) -> Option<SshHostKey> {
        *lock(&identity.spare) = Some(SshHostKey {
            private: "-----BEGIN OPENSSH PRIVATE KEY-----\nk\n".into(),
            public: "ssh-ed25519 K".into(),
        });
        let ctx = Ctx { vm, image, dir };
        let mut plan = crate::testing::empty_plan(vm);
        plan.restore = restore;
        identity.prepare(&ctx, &mut plan).await.unwrap();
        plan.guest.ssh_host_key
    }

    #[tokio::test]
    async fn only_a_first_cold_boot_of_an_image_with_sshd_gets_a_host_key() {
        let h = crate::testing::Harness::new();
        let (vm, mut image, dir) =
            crate::testing::recorded_vm(&h, "web", banger_api::NetworkMode::None);
        let identity = Identity::new(h.runner.clone(), h.paths.runtime_dir.join("keys"));
        let given = |image: &ImageRecord, restore| {
            let (identity, vm, image, dir) = (&identity, &vm, image.clone(), &dir);
            async move { first_boot_key(identity, (vm, &image, dir), restore).await }
        };
        let key = given(&image, false)
            .await
            .expect("a registered image may have sshd");
        assert_eq!(key.public, "ssh-ed25519 K");
        assert_eq!(
            given(&image, true).await,
            None,
            "a restore's identity request brings one"
        );
        image.manifest = r#"{"installed": {"busybox-static": "1:1.35.0"}}"#.into();
        assert_eq!(
            given(&image, false).await,
            None,
            "built without openssh-server"
        );
        image.manifest = r#"{"installed": {"openssh-server": "1:9.2p1"}}"#.into();
        assert!(given(&image, false).await.is_some());
        identity.no_sshd().insert(image_key(&image));
        assert_eq!(
            given(&image, false).await,
            None,
            "a restored guest said it has none"
        );
        identity.no_sshd().clear();
        std::fs::write(dir.file(KNOWN_HOSTS), "banger-idweb ssh-ed25519 OLD\n").unwrap();
        assert_eq!(
            given(&image, false).await,
            None,
            "a pinned key: the guest has one"
        );
    }

    #[test]
    fn the_new_host_key_is_pinned_under_the_vms_alias() {
        assert_eq!(
            known_hosts_line("ab12", "ssh-ed25519 AAAA\n"),
            "banger-ab12 ssh-ed25519 AAAA\n"
        );
    }

    #[test]
    fn host_keys_are_made_with_ssh_keygen_one_ahead_and_never_twice() {
        if banger_sys::command::which("ssh-keygen").is_none() {
            eprintln!("skipped: needs ssh-keygen (openssh-client)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("host-keys");
        let identity = Identity::new(Arc::new(banger_sys::command::SystemRunner), keys.clone());
        let key = identity.host_key("web").unwrap();
        assert!(key.public.starts_with("ssh-ed25519 "), "{key:?}");
        assert!(
            key.private
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        );
        // The spare is made in the background after each key handed out.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&identity.spare).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let spare = lock(&identity.spare).clone().expect("a spare was made");
        let other = identity.host_key("web").unwrap();
        assert_eq!(other, spare, "the next restore takes the spare");
        assert_ne!(key.public, other.public);
        assert!(
            lock(&identity.spare).as_ref() != Some(&other),
            "and it is not handed out twice"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&keys).unwrap().permissions(),
        );
        assert_eq!(
            mode & 0o777,
            0o700,
            "keys are made where only the daemon's user looks"
        );
        // Daemon start, before any restore: no key is being made then.
        while lock(&identity.spare).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        identity.sweep(&[]);
        assert!(!keys.exists(), "daemon start empties it");
    }

    #[test]
    fn a_config_without_a_hostname_names_the_guest_after_the_vm() {
        let guest = GuestConfig {
            vm_name: "web".into(),
            ..Default::default()
        };
        assert_eq!(request(&guest, vec![], UNIX_EPOCH, None).hostname, "web");
    }
}
