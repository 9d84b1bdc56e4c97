//! The agent's end of the virtio-serial port, served for the guest's whole
//! life. Owns opening the port and the reconnect loop; the protocol on it is
//! `channel.rs`'s.
//!
//! A virtio-serial port reads end of file (and polls `POLLHUP`) while no
//! host process holds the host side, and `EAGAIN` while one does but sent
//! nothing. So end of file means "host gone": the connection ends (killing
//! the processes its streams ran), and the loop looks again every [`RETRY`]
//! for the next host's sync line, forever.
//!
//! The port's two kinds of news come by different paths in the guest's
//! kernel: the host's bytes from the receive interrupt, the host's arrival
//! from a work queue. Under load the bytes come first, and a registration
//! made between the two polls hung up and stays so (tokio keeps a hang-up):
//! the answer to a sync line read on it went nowhere ("broken pipe") and the
//! host waited for it in vain. The answer and the session so go on a fresh
//! registration, made after the line was read and once the port itself
//! (polled directly) shows the host; until it does, the answer is tried
//! again every [`RETRY`] ([`crate::channel::ANSWER_FOR`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
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

/// A new registration of `port` for a host it shows now: made while the
/// port is hung up, it would stay so.
fn fresh(port: &OwnedFd) -> io::Result<FdStream> {
    if crate::fdio::hung_up(port.as_fd())? {
        return Err(io::ErrorKind::BrokenPipe.into());
    }
    port.try_clone().and_then(FdStream::new)
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
                let answering = channel.answering();
                let reopen = |_| fresh(&port);
                match channel.serve_reopening(io, reopen, agent.clone()).await {
                    // Not an error: the old connection's end, seen as the
                    // new one's sync line arrives.
                    Err(_) if channel.host_reconnected() => log(format_args!("host reconnected")),
                    // Said once: the port does not show the host yet.
                    Err(e) if channel.answering() => {
                        if !answering {
                            log(format_args!(
                                "cannot answer the host yet ({}); trying again",
                                chain(&e)
                            ))
                        }
                    }
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
