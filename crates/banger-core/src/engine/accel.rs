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
    match choice {
        AccelChoice::Kvm => (Accel::Kvm, KvmStatus::Usable),
        AccelChoice::Tcg => (Accel::Tcg, kvm_device_status().unwrap_or(KvmStatus::Usable)),
        AccelChoice::Auto => {
            let status = match kvm_device_status() {
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
