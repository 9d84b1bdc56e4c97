//! Choosing KVM or TCG honestly. A `/dev/kvm` that exists is not enough:
//! nested setups (PVM) expose one that hangs a stock kernel early in boot.
//! So `auto` boots the image's kernel under KVM once with no init to run and
//! waits for the kernel to reach its panic about the missing init; if that
//! does not happen within the timeout, KVM is unusable here and we fall back
//! to TCG. The verdict is cached per QEMU binary and kernel, and reported by
//! `banger doctor`.

use super::Accel;
use crate::config::AccelChoice;
use banger_sys::command::Cmd;
use banger_sys::spawn::{SpawnOptions, Spawner, Stdio};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// What we know about `/dev/kvm` on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kvm", rename_all = "snake_case")]
pub enum KvmStatus {
    Usable,
    /// Opens, but cannot boot a stock kernel.
    Unusable {
        reason: String,
    },
    /// Exists but cannot be opened by this user.
    NotAccessible {
        reason: String,
    },
    Absent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    status: KvmStatus,
}

/// Whether `/dev/kvm` can even be opened; no boot involved.
pub fn kvm_device_status() -> Option<KvmStatus> {
    if !Path::new("/dev/kvm").exists() {
        return Some(KvmStatus::Absent);
    }
    match banger_sys::process::kvm_openable() {
        Ok(()) => None,
        Err(e) => Some(KvmStatus::NotAccessible {
            reason: format!(
                "/dev/kvm cannot be opened by uid {}: {e}; add the user to group kvm",
                banger_sys::process::euid()
            ),
        }),
    }
}

/// The cached probe verdict, if any.
pub fn cached(cache_file: &Path, qemu: &Path, kernel: &Path) -> Option<KvmStatus> {
    let entry: CacheEntry = serde_json::from_slice(&std::fs::read(cache_file).ok()?).ok()?;
    (entry.key == cache_key(qemu, kernel)).then_some(entry.status)
}

/// The verdict depends on the host, QEMU and the kernel's content (not its
/// path), so isolated instances on one host share it.
fn cache_key(qemu: &Path, kernel: &Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    // Size plus the first 4 MiB (headers, version string) tell kernels apart
    // without hashing 50 MB on every daemon start.
    let mut h = sha2::Sha256::new();
    let size = std::fs::metadata(kernel).map(|m| m.len()).unwrap_or(0);
    if let Ok(f) = std::fs::File::open(kernel) {
        let _ = std::io::copy(&mut f.take(4 << 20), &mut h);
    }
    format!("{}|{size}|{}", qemu.display(), hex::encode(h.finalize()))
}

/// Decides the accelerator for `choice`, probing (and caching) when `auto`
/// needs to know. Returns the accelerator and, when it is TCG under `auto`,
/// why.
pub async fn decide(
    spawner: &dyn Spawner,
    choice: AccelChoice,
    qemu: &Path,
    kernel: &Path,
    cache_file: &Path,
) -> (Accel, KvmStatus) {
    let device = kvm_device_status();
    decide_given(device, spawner, choice, qemu, kernel, cache_file).await
}

/// [`decide`], given what [`kvm_device_status`] said: the host's device
/// stays out of the unit tests.
async fn decide_given(
    device: Option<KvmStatus>,
    spawner: &dyn Spawner,
    choice: AccelChoice,
    qemu: &Path,
    kernel: &Path,
    cache_file: &Path,
) -> (Accel, KvmStatus) {
    match choice {
        AccelChoice::Kvm => (Accel::Kvm, KvmStatus::Usable),
        AccelChoice::Tcg => (Accel::Tcg, device.unwrap_or(KvmStatus::Usable)),
        AccelChoice::Auto => {
            let status = match device {
                Some(s) => s,
                None => match cached(cache_file, qemu, kernel) {
                    Some(s) => s,
                    None => {
                        let s = probe(spawner, qemu, kernel, Duration::from_secs(8)).await;
                        let entry = CacheEntry {
                            key: cache_key(qemu, kernel),
                            status: s.clone(),
                        };
                        if let Some(dir) = cache_file.parent() {
                            let _ = std::fs::create_dir_all(dir);
                        }
                        if let Ok(bytes) = serde_json::to_vec(&entry) {
                            let _ = std::fs::write(cache_file, bytes);
                        }
                        s
                    }
                },
            };
            let accel = if status == KvmStatus::Usable {
                Accel::Kvm
            } else {
                Accel::Tcg
            };
            (accel, status)
        }
    }
}

/// Boots `kernel` under KVM with an init that does not exist and waits for
/// the kernel's complaint about it.
pub async fn probe(
    spawner: &dyn Spawner,
    qemu: &Path,
    kernel: &Path,
    timeout: Duration,
) -> KvmStatus {
    let cmd = Cmd::new(qemu.to_string_lossy())
        .args([
            "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128M", "-smp", "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .args([
            "-append",
            "console=ttyS0 panic=-1 rdinit=/banger-kvm-probe init=/banger-kvm-probe",
        ]);
    let opts = SpawnOptions {
        stdin: Stdio::Null,
        stdout: Stdio::Piped,
        stderr: Stdio::Piped,
        own_process_group: false,
        kill_on_drop: true,
    };
    let mut child = match spawner.spawn(&cmd, &opts) {
        Ok(c) => c,
        Err(e) => {
            return KvmStatus::Unusable {
                reason: format!("cannot run {}: {}", qemu.display(), crate::error::chain(&e)),
            };
        }
    };
    let mut out = child.stdout.take().expect("piped");
    let mut seen = Vec::new();
    let verdict = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    if text.contains("Kernel panic")
                        || text.contains("Run /")
                        || text.contains("VFS:")
                    {
                        return true;
                    }
                }
            }
        }
    })
    .await;
    let _ = child.start_kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_millis(200), e.read_to_string(&mut err)).await;
    }
    let _ = child.wait().await;
    match verdict {
        Ok(true) => KvmStatus::Usable,
        Ok(false) => KvmStatus::Unusable {
            reason: format!("qemu exited before the kernel booted: {}", err.trim()),
        },
        Err(_) => {
            let last = String::from_utf8_lossy(&seen)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string();
            KvmStatus::Unusable {
                reason: format!(
                    "a stock kernel hangs under /dev/kvm (last console line: {last:?}); nested virtualization without full KVM? using TCG"
                ),
            }
        }
    }
}

/// Where the probe verdict is cached: with other host facts in the cache dir.
pub fn cache_file(cache_dir: &Path) -> PathBuf {
    cache_dir.join("kvm-probe.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_sys::spawn::RecordingSpawner;

    /// A stand-in for QEMU: a shell running `script`.
    fn qemu_that(script: &str) -> RecordingSpawner {
        RecordingSpawner::new(Cmd::new("sh").args(["-c", script]))
    }

    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        fn new() -> Host {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("vmlinux"), b"kernel one").unwrap();
            Host { dir }
        }

        fn kernel(&self) -> PathBuf {
            self.dir.path().join("vmlinux")
        }

        fn cache(&self) -> PathBuf {
            cache_file(&self.dir.path().join("cache"))
        }

        async fn decide(&self, spawner: &RecordingSpawner) -> (Accel, KvmStatus) {
            let qemu = Path::new("/usr/bin/qemu-system-x86_64");
            decide_given(
                None,
                spawner,
                AccelChoice::Auto,
                qemu,
                &self.kernel(),
                &self.cache(),
            )
            .await
        }
    }

    fn reason(status: &KvmStatus) -> &str {
        match status {
            KvmStatus::Unusable { reason } | KvmStatus::NotAccessible { reason } => reason,
            other => panic!("no reason in {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_kernel_that_reaches_its_missing_init_under_kvm_means_kvm() {
        let host = Host::new();
        let qemu =
            qemu_that("echo 'Kernel panic - not syncing: No working init found'; exec sleep 60");
        assert_eq!(host.decide(&qemu).await, (Accel::Kvm, KvmStatus::Usable));
        let spawns = qemu.spawns();
        let [(cmd, _)] = &spawns[..] else {
            panic!("one probe: {spawns:?}")
        };
        let args = cmd.args_lossy().join(" ");
        assert!(
            args.contains("-accel kvm") && args.contains(&host.kernel().display().to_string()),
            "the probe boots the image's kernel under kvm: {args}"
        );
    }

    #[tokio::test]
    async fn a_kvm_that_cannot_start_a_guest_means_tcg_with_qemus_words() {
        let host = Host::new();
        let qemu =
            qemu_that("echo 'failed to initialize kvm: Operation not permitted' >&2; exit 1");
        let (accel, status) = host.decide(&qemu).await;
        assert_eq!(accel, Accel::Tcg);
        assert!(
            reason(&status).contains("failed to initialize kvm: Operation not permitted"),
            "{status:?}"
        );
    }

    #[tokio::test]
    async fn a_kernel_that_hangs_under_kvm_means_tcg_saying_so() {
        let host = Host::new();
        let qemu = qemu_that("echo 'Booting the kernel.'; exec sleep 60");
        let t0 = std::time::Instant::now();
        let status = probe(
            &qemu,
            Path::new("qemu"),
            &host.kernel(),
            Duration::from_millis(500),
        )
        .await;
        let why = reason(&status);
        assert!(
            why.contains("hangs under /dev/kvm")
                && why.contains("Booting the kernel.")
                && why.contains("using TCG"),
            "{why}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the probe gives up on time"
        );
    }

    #[tokio::test]
    async fn a_qemu_that_cannot_run_means_tcg_naming_it() {
        let host = Host::new();
        let (accel, status) = host.decide(&RecordingSpawner::missing()).await;
        assert_eq!(accel, Accel::Tcg);
        assert!(
            reason(&status).contains("cannot run /usr/bin/qemu-system-x86_64"),
            "{status:?}"
        );
    }

    #[tokio::test]
    async fn the_verdict_is_cached_per_kernel_and_not_probed_again() {
        let host = Host::new();
        let fails = qemu_that("echo 'failed to initialize kvm' >&2; exit 1");
        let first = host.decide(&fails).await;
        assert_eq!(first.0, Accel::Tcg);
        let boots = qemu_that("echo 'Kernel panic'; exec sleep 60");
        assert_eq!(host.decide(&boots).await, first, "the cached verdict");
        assert!(boots.spawns().is_empty(), "no second probe");
        std::fs::write(host.kernel(), b"kernel two").unwrap();
        assert_eq!(
            host.decide(&boots).await,
            (Accel::Kvm, KvmStatus::Usable),
            "another kernel is probed afresh"
        );
        assert_eq!(boots.spawns().len(), 1);
    }

    #[tokio::test]
    async fn a_device_that_cannot_be_opened_means_tcg_without_a_probe() {
        let host = Host::new();
        let qemu = qemu_that("exit 1");
        let denied = KvmStatus::NotAccessible {
            reason: "add the user to group kvm".into(),
        };
        let decided = decide_given(
            Some(denied.clone()),
            &qemu,
            AccelChoice::Auto,
            Path::new("qemu"),
            &host.kernel(),
            &host.cache(),
        )
        .await;
        assert_eq!(decided, (Accel::Tcg, denied));
        assert!(qemu.spawns().is_empty());
    }
}
