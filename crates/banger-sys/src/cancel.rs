//! Stopping a long run of external programs from outside it: an image
//! build's `mmdebstrap`, downloads, `mkfs`. A [`Cancel`] is shared between
//! whoever may cancel (the daemon, when a user interrupts the build) and a
//! [`crate::command::CancellableRunner`], which starts each program as the
//! leader of its own process group and registers that group here. Cancelling
//! marks the run cancelled (no further program starts) and sends SIGTERM to
//! every registered group, then SIGKILL to any still registered a few
//! seconds later: a group stays registered until its leader has been reaped,
//! so its id cannot have been reused meanwhile.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a cancelled program has to exit after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    cancelled: bool,
    groups: Vec<u32>,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Cancels: the registered process groups get SIGTERM now and SIGKILL
    /// after [`TERM_GRACE`] if they are still registered then.
    pub fn cancel(&self) {
        let groups = {
            let mut state = self.lock();
            state.cancelled = true;
            state.groups.clone()
        };
        if groups.is_empty() {
            return;
        }
        for &g in &groups {
            signal_group(g, rustix::process::Signal::Term);
        }
        let this = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(TERM_GRACE);
            let state = this.lock();
            for g in groups.iter().filter(|g| state.groups.contains(g)) {
                signal_group(*g, rustix::process::Signal::Kill);
            }
        });
    }

    /// Registers the process group led by `leader` (a child not yet
    /// reaped) until the guard drops; signals it at once when the run is
    /// cancelled already.
    pub fn register(&self, leader: u32) -> Registered {
        let cancelled = {
            let mut state = self.lock();
            state.groups.push(leader);
            state.cancelled
        };
        if cancelled {
            signal_group(leader, rustix::process::Signal::Term);
        }
        Registered {
            cancel: self.clone(),
            leader,
        }
    }
}

/// A registered process group; unregisters on drop (after its leader has
/// been reaped).
#[derive(Debug)]
pub struct Registered {
    cancel: Cancel,
    leader: u32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.cancel.lock().groups.retain(|g| *g != self.leader);
    }
}

fn signal_group(leader: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(leader as i32) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}
