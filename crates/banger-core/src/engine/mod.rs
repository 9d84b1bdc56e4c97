//! The VMM boundary. An [`Engine`] runs one VM from a [`MachineSpec`] and
//! owns everything that depends on which VMM that is: its root disk format
//! and how the copy-on-write disk over an image is made, the accelerator
//! decision, where the console goes, spawning, the agent channel, stop and
//! kill, liveness and waiting for exit. It returns transient [`Handles`].
//!
//! Engines know nothing of the store, operations or capabilities. The daemon
//! holds an [`Engines`] registry; each VM records its [`EngineKind`], so VMs
//! of several engines live side by side.

pub mod accel;
#[cfg(test)]
pub mod fake;
pub mod qemu;
pub mod snapshot;

use crate::layout::VmDir;
use banger_api::{Check, EngineKind};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
pub use snapshot::{Layer, RamMapping, SnapshotReport, Switch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;

/// Which accelerator a VM runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Why an engine holds its guest paused without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// A disk write failed for lack of space on the host.
    DiskFull,
    /// A disk write failed for another reason.
    IoError,
}

impl Pause {
    pub fn describe(self) -> &'static str {
        match self {
            Pause::DiskFull => "host disk full",
            Pause::IoError => "host disk i/o error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveFormat {
    Raw,
    Qcow2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    pub format: DriveFormat,
    /// The guest finds each drive by this serial.
    pub serial: &'static str,
    pub read_only: bool,
}

/// A network card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    /// A tap the daemon prepared (bridge mode).
    Tap { ifname: String, mac: String },
    /// The engine's user-mode NAT with loopback forwards; `restrict` cuts egress.
    User {
        mac: String,
        restrict: bool,
        forwards: Vec<banger_api::PortForward>,
    },
    /// A user-mode network served by another process (passt) on a unix
    /// stream socket; forwards and policy are that process's.
    Stream { socket: PathBuf, mac: String },
}

/// Everything an engine needs to boot one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSpec {
    pub vm_id: String,
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Extra kernel arguments (the image's), appended to the engine's own.
    pub cmdline_extra: String,
    /// In order: root, then what capabilities contributed, then the config drive.
    pub drives: Vec<Drive>,
    pub nics: Vec<Nic>,
    /// Guest serial console, appended to across boots.
    pub console_log: PathBuf,
    /// The engine's own stderr.
    pub engine_log: PathBuf,
    /// Directory for the engine's sockets (short path: unix sockets cap at 108 bytes).
    pub run_dir: PathBuf,
    /// The VM's state dir: the engine keeps the guest's RAM in a file there.
    pub state_dir: PathBuf,
    pub accel: Accel,
    /// Host TSC rate for `tsc_early_khz` under TCG.
    pub tsc_khz: Option<u64>,
    /// Address-space randomisation for the guest's processes under TCG
    /// (always on under KVM): see [`qemu::kernel_cmdline`].
    pub tcg_aslr: bool,
}

/// What is currently true about a running VM's engine; kept in memory and
/// in the VM's `handles.json`, never in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handles {
    pub pid: u32,
    pub accel: Accel,
    pub agent_socket: PathBuf,
    pub control_socket: PathBuf,
    /// Unix seconds.
    pub started_at: i64,
}

/// The unix sockets an engine makes for one VM, in the VM's runtime dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sockets {
    pub agent: PathBuf,
    pub control: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: banger_sys::command::CommandError,
    },
    #[error("the engine exited during start-up: {log}")]
    EarlyExit { log: String },
    #[error("the engine did not create {path} within {secs} s")]
    SocketTimeout { path: PathBuf, secs: u64 },
    #[error("cannot connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("engine control command {command} failed: {message}")]
    Control { command: String, message: String },
    #[error("cannot create the root disk {path}")]
    RootDisk {
        path: PathBuf,
        #[source]
        source: banger_sys::command::CommandError,
    },
    #[error("cannot create the disk layer {path}")]
    Overlay {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {engine} engine cannot {what}")]
    Unsupported {
        engine: &'static str,
        what: &'static str,
    },
    #[error("the snapshot in {dir} is incomplete or unreadable: {problem}")]
    BadSnapshot { dir: PathBuf, problem: String },
    #[error("engine i/o failed")]
    Io(#[from] std::io::Error),
}

pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;

    /// The engine program and its version, as far as a saved device state
    /// depends on them (a warm snapshot made under another is not restored).
    fn version(&self) -> String {
        self.kind().as_str().to_string()
    }

    /// The VM's root disk as this engine boots it.
    fn root_drive(&self, dir: &VmDir) -> Drive;

    /// Makes the root disk: copy-on-write over the image's raw `base`, in
    /// this engine's format (blocking; a few milliseconds).
    fn create_root_disk(&self, base: &Path, dir: &VmDir) -> Result<(), EngineError>;

    /// KVM or TCG for `kernel`, decided once per engine (probing when the
    /// configuration asks for `auto`), with what is known about `/dev/kvm`.
    fn accel<'a>(&'a self, kernel: &'a Path) -> BoxFuture<'a, (Accel, accel::KvmStatus)>;

    /// Whether [`Engine::accel`] would boot a probe now (so callers can show
    /// it as a stage).
    fn accel_needs_probe(&self, kernel: &Path) -> bool;

    /// Where this engine puts a VM's sockets, given its runtime dir. A
    /// scratch file naming any others is not trusted.
    fn sockets(&self, run_dir: &Path) -> Sockets;

    /// Starts the VM's engine process; returns once it runs and its sockets exist.
    fn spawn<'a>(&'a self, spec: &'a MachineSpec) -> BoxFuture<'a, Result<Handles, EngineError>>;

    /// A fresh byte stream to the guest agent's channel.
    fn connect_agent<'a>(
        &'a self,
        handles: &'a Handles,
    ) -> BoxFuture<'a, Result<UnixStream, EngineError>>;

    /// Asks the engine to quit, waits up to `timeout`, then kills it.
    fn stop<'a>(
        &'a self,
        handles: &'a Handles,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Ends the engine at once, without asking (its VM is being deleted:
    /// nothing it would flush is kept). Resolves once the end is sent (the
    /// engine can no longer touch its disks or devices) to a future that
    /// resolves once the engine is gone: a delete removes the VM's files
    /// in between, while the kernel tears the process down. Engines that
    /// cannot split it end the engine here and return a finished future.
    fn kill<'a>(
        &'a self,
        handles: &'a Handles,
    ) -> BoxFuture<'a, Result<BoxFuture<'a, ()>, EngineError>> {
        Box::pin(async move {
            self.stop(handles, Duration::ZERO).await?;
            Ok(Box::pin(async {}) as BoxFuture<'a, ()>)
        })
    }

    /// Whether the process in `handles` is alive and really this VM's
    /// engine (handles may come from a scratch file: a process that is not
    /// must never be signalled).
    fn alive(&self, handles: &Handles) -> bool;

    /// Resolves when the engine in `handles` has exited.
    fn wait_exit<'a>(&'a self, handles: &'a Handles) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            while self.alive(handles) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    /// Waits until the engine is gone; false when it still runs after `timeout`.
    fn wait_gone<'a>(&'a self, handles: &'a Handles, timeout: Duration) -> BoxFuture<'a, bool> {
        Box::pin(wait_while(timeout, Duration::from_millis(20), || {
            self.alive(handles)
        }))
    }

    /// Follows whether the engine holds the guest paused after a disk
    /// error, sending each change (`None`: running), until the engine
    /// exits. Engines that never pause on their own return at once.
    fn follow_pause<'a>(
        &'a self,
        _handles: &'a Handles,
        _tx: tokio::sync::watch::Sender<Option<Pause>>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// Stops the guest's vCPUs (the process, its devices and its
    /// connections stay); [`Engine::resume`] lets it run on. A standby
    /// waits so (`vm/standby.rs`), costing no CPU.
    fn pause<'a>(&'a self, _handles: &'a Handles) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async { Err(self.unsupported("pause guests")) })
    }

    /// Lets a guest paused by a disk error (or [`Engine::pause`]) run again.
    fn resume<'a>(&'a self, _handles: &'a Handles) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async { Ok(()) })
    }

    /// Makes `overlay`, an empty copy-on-write layer over `base` (which a
    /// running VM may be writing: the layer is switched to by
    /// [`Engine::snapshot`]).
    fn create_layer(&self, _base: &Layer, _overlay: &Path) -> Result<(), EngineError> {
        Err(self.unsupported("take snapshots"))
    }

    /// Makes `layer`, a copy of another VM's layer no engine has open,
    /// name `base` as what it is over (its contents unchanged).
    fn rebase_layer(&self, _layer: &Layer, _base: &Layer) -> Result<(), EngineError> {
        Err(self.unsupported("copy snapshot disks"))
    }

    /// Writes `dest`: the disk that `top` (with its whole chain) shows, as
    /// one layer over `base` (only what differs from it), or standalone.
    /// For a new VM's disks from another VM's frozen layers.
    fn copy_layer(
        &self,
        _top: &Layer,
        _base: Option<&Layer>,
        _dest: &Layer,
    ) -> Result<(), EngineError> {
        Err(self.unsupported("copy snapshot disks"))
    }

    /// Snapshots the running VM into `dir` (empty): pauses the guest,
    /// flushes its disks, writes its device state and RAM, moves each drive
    /// in `switch` onto its overlay (so the layer it leaves is frozen), then
    /// lets it run on when `resume`, or leaves it paused for a stop.
    fn snapshot<'a>(
        &'a self,
        _handles: &'a Handles,
        _dir: &'a Path,
        _switch: &'a [Switch],
        _resume: bool,
    ) -> BoxFuture<'a, Result<SnapshotReport, EngineError>> {
        Box::pin(async { Err(self.unsupported("take snapshots")) })
    }

    /// Starts the VM of `spec` from the snapshot in `from` instead of
    /// booting it (`spec`'s drives are layers over the snapshot's); returns
    /// once the guest runs again.
    fn restore<'a>(
        &'a self,
        _spec: &'a MachineSpec,
        _from: &'a Path,
        _ram: RamMapping,
    ) -> BoxFuture<'a, Result<Handles, EngineError>> {
        Box::pin(async { Err(self.unsupported("restore snapshots")) })
    }

    /// Lets a guest run on that a snapshot left paused when the daemon
    /// taking it was killed (at adoption); true when it was paused so.
    fn resume_interrupted<'a>(
        &'a self,
        _handles: &'a Handles,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async { Ok(false) })
    }

    fn unsupported(&self, what: &'static str) -> EngineError {
        EngineError::Unsupported {
            engine: self.kind().as_str(),
            what,
        }
    }

    /// The guest's serial console as this engine writes it.
    fn console_log(&self, dir: &VmDir) -> PathBuf {
        dir.console_log()
    }

    /// Doctor lines about this engine on this host (`kernel`: an image's
    /// kernel to probe the accelerator with, when there is one).
    fn checks<'a>(&'a self, kernel: Option<&'a Path>) -> BoxFuture<'a, Vec<Check>>;
}

/// Polls `holds` until it is false (true) or `timeout` passes with it
/// still true (false): after 1 ms, then twice as long each time up to
/// `every` (a killed QEMU is gone in a few milliseconds: a first look
/// after a full `every` made each delete wait it out).
pub async fn wait_while(
    timeout: Duration,
    every: Duration,
    mut holds: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(1).min(every);
    while holds() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(every);
    }
    true
}

/// The engines this daemon can run, by kind, and the one new VMs get.
#[derive(Clone)]
pub struct Engines {
    by_kind: BTreeMap<&'static str, Arc<dyn Engine>>,
    default: EngineKind,
}

impl Engines {
    /// A registry whose default is `default` (the first engine registered).
    pub fn new(default: Arc<dyn Engine>) -> Engines {
        let kind = default.kind();
        let mut by_kind = BTreeMap::new();
        by_kind.insert(kind.as_str(), default);
        Engines {
            by_kind,
            default: kind,
        }
    }

    pub fn with(mut self, engine: Arc<dyn Engine>) -> Engines {
        self.by_kind.insert(engine.kind().as_str(), engine);
        self
    }

    pub fn default_kind(&self) -> EngineKind {
        self.default
    }

    pub fn get(&self, kind: EngineKind) -> Result<Arc<dyn Engine>, crate::Error> {
        self.by_kind
            .get(kind.as_str())
            .cloned()
            .ok_or(crate::Error::EngineUnavailable {
                engine: kind,
                hint: match kind {
                    EngineKind::Firecracker => {
                        "install firecracker on a host with full KVM, or recreate the vm"
                    }
                    EngineKind::Qemu => "install qemu-system-x86",
                },
            })
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Engine>> {
        self.by_kind.values()
    }
}
