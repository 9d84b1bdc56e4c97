//! The agent's end of the virtio-serial port, served for the guest's whole
//! life. Owns opening the port and the reconnect loop; the protocol on it is
//! `channel.rs`'s.
//!
//! A virtio-serial port reads end of file (and polls `POLLHUP`) while no
//! host process holds the host side, and `EAGAIN` while one does but sent
//! nothing. So end of file means "host gone": the connection ends (killing
//! the processes its streams ran), and the loop looks again every [`RETRY`]
//! for the next host's sync line, forever.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

use crate::Agent;
use crate::channel::Channel;
use crate::console::{chain, log};
use crate::fdio::FdStream;

/// Pause between looks while no host is connected.
pub const RETRY: Duration = Duration::from_millis(10);

/// Opens the port device read-write and non-blocking.
pub fn open(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Serves host connections on `port` forever. Each attempt gets its own
/// registration with the reactor (a duplicate of `port`), because a
/// registration that saw a hang-up stays hung up (see `fdio.rs`). Between
/// attempts it waits [`RETRY`] (a port with no host reads as hung up at
/// once), but not when the last connection left bytes to look for a sync
/// line in: a host that reconnected without a hang-up the agent saw (every
/// restore: the snapshot's connection is gone) is answered at once.
pub async fn serve_forever(port: OwnedFd, agent: Arc<Agent>) -> ! {
    let mut channel = Channel::default();
    loop {
        match port.try_clone().and_then(FdStream::new) {
            Ok(io) => {
                match channel.serve(io, agent.clone()).await {
                    // Not an error: the old connection's end, seen as the
                    // new one's sync line arrives.
                    Err(_) if channel.host_reconnected() => log(format_args!("host reconnected")),
                    Err(e) => log(format_args!("host connection ended: {}", chain(&e))),
                    Ok(()) => {}
                }
            }
            Err(e) => log(format_args!("cannot watch the agent port: {e}")),
        }
        if channel.tail.is_empty() {
            tokio::time::sleep(RETRY).await;
        }
    }
}
