//! `banger-agent`: the guest's PID 1 and the server end of the host⇄agent
//! protocol (`banger-proto`).
//!
//! As init it boots the guest (`boot`: kernel modules, disks found by
//! serial, switch to the root disk; `setup`: the mounts, hostname, ssh
//! keys and network (`net`) a system expects), after a restore takes the
//! identity the host gives it (`identity`), and serves the host on the
//! virtio-serial port (`port`) for the rest of the guest's life, with sshd
//! (`sshd`) kept running beside it when the image has one. The server half
//! ([`serve_connection`]) runs over any byte stream, so it is tested on the
//! host as a normal process, and a host-side client can be tested against it
//! without a VM.
//!
//! What runs where: one current-thread tokio runtime for all I/O; one
//! thread that reaps children (`reaper`); a boot-time thread that waits for
//! the kernel's random numbers (`entropy`); blocking threads only for the
//! shutdown sequence. sshd's supervisor is a task on the runtime.

#![forbid(unsafe_code)]

use std::sync::Arc;

pub mod background;
pub mod boot;
pub mod channel;
pub mod connect;
pub mod console;
pub mod devices;
pub mod entropy;
pub mod exec;
pub mod fdio;
pub mod files;
pub mod git;
pub mod identity;
pub mod modinfo;
pub mod net;
pub mod port;
pub mod reaper;
pub mod sessions;
pub mod setup;
pub mod shutdown;
pub mod spawn;
pub mod sshd;

pub use channel::{Channel, ChannelError, serve_connection};
pub use shutdown::{GuestPower, Power};
pub use spawn::ExecDefaults;

/// What every request handler shares.
pub struct Agent {
    /// The process-wide child reaper.
    pub reaper: &'static reaper::Reaper,
    /// Defaults for exec'd processes.
    pub exec: ExecDefaults,
    /// What a shutdown request calls.
    pub power: Arc<dyn Power>,
    /// The guest's sessions, shared by every host connection.
    pub sessions: sessions::Sessions,
    /// The network the guest's NIC has now (boot's, then each restore's):
    /// where `identity` finds the link and the address to replace.
    pub network: std::sync::Mutex<Option<banger_proto::GuestNetwork>>,
    /// Holds the guest's own work until the host's first command has run.
    pub background: background::Gate,
    /// The guest has sshd, which that work starts: a connection to its port
    /// opens the gate at once and waits for sshd to listen.
    pub sshd: bool,
}

impl Agent {
    /// An agent with default exec settings that powers off through `power`.
    pub fn new(power: Arc<dyn Power>) -> Self {
        Agent {
            reaper: reaper::Reaper::global(),
            exec: ExecDefaults::default(),
            power,
            sessions: sessions::Sessions::default(),
            network: std::sync::Mutex::new(None),
            background: background::Gate::default(),
            sshd: false,
        }
    }
}

/// Whether this process is the system's init.
pub fn is_init() -> bool {
    rustix::process::getpid().is_init()
}
