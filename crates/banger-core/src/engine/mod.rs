//! The VMM boundary: what an engine must do to run one VM (spawn from a
//! [`MachineSpec`], give a byte stream to the guest agent, stop, kill, say
//! whether it is alive) and the transient [`Handles`] it returns. Engines
//! know nothing of the store, operations or capabilities.

pub mod accel;
pub mod qemu;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
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

/// The VM's network card, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    /// A tap the daemon prepared (bridge mode).
    Tap { ifname: String, mac: String },
    /// QEMU's user-mode NAT with loopback forwards; `restrict` cuts egress.
    User {
        mac: String,
        restrict: bool,
        forwards: Vec<banger_api::PortForward>,
    },
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
    pub drives: Vec<Drive>,
    pub nic: Option<Nic>,
    /// Guest serial console, appended to across boots.
    pub console_log: PathBuf,
    /// The engine's own stderr.
    pub engine_log: PathBuf,
    /// Directory for the engine's sockets (short path: unix sockets cap at 108 bytes).
    pub run_dir: PathBuf,
    pub accel: Accel,
    /// Host TSC rate for `tsc_early_khz` under TCG.
    pub tsc_khz: Option<u64>,
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
    /// The tap the VM's NIC uses (bridge mode).
    #[serde(default)]
    pub tap: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
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
    #[error("engine i/o failed")]
    Io(#[from] std::io::Error),
}

pub trait Engine: Send + Sync {
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
    /// Whether the process in `handles` is alive and really this VM's engine.
    fn alive(&self, handles: &Handles) -> bool;
}
