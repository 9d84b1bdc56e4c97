//! The one place that waits for child processes. As PID 1 the agent inherits
//! every orphan in the guest, so it must reap any child, not just the ones it
//! spawned; and only one waiter may call `wait` or exit statuses get stolen.
//! Owns that waiting; does not own spawning (callers spawn inside
//! [`Reaper::spawn`]) nor signalling.
//!
//! How it works:
//!
//! 1. A dedicated thread blocks in `waitid(P_ALL, WEXITED | WNOWAIT)`, which
//!    returns once some child is a zombie without reaping it.
//! 2. It then takes the registry lock and reaps with `wait(WNOHANG)` until
//!    nothing is left, sending each status to whoever registered that pid;
//!    a status nobody registered is an orphan's and is dropped.
//! 3. [`Reaper::spawn`] holds the same lock while it spawns and registers,
//!    so a child that dies at once is never reaped before it is registered,
//!    and std's own wait for a child whose exec failed never races step 2.
//! 4. With no children at all `waitid` fails with `ECHILD`; the thread then
//!    sleeps on a condition variable until the next spawn.
//!
//! A thread rather than a `SIGCHLD` handler: it needs no signal plumbing and
//! is process-wide, so it outlives any one tokio runtime (each unit test has
//! its own). Nothing else in the process may wait for children.

use std::collections::HashMap;
use std::io;
use std::sync::{Condvar, Mutex, OnceLock};

use banger_proto::ExitStatus;
use rustix::io::Errno;
use rustix::process::{Pid, WaitId, WaitOptions, WaitStatus, WaitidOptions};
use tokio::sync::oneshot;

/// Registry of the children someone waits for; see the module doc.
#[derive(Debug, Default)]
pub struct Reaper {
    state: Mutex<State>,
    spawned: Condvar,
}

#[derive(Debug, Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<ExitStatus>>,
    /// Bumped on every spawn, so the thread knows whether to wait for one.
    generation: u64,
}

static GLOBAL: OnceLock<&'static Reaper> = OnceLock::new();

impl Reaper {
    /// The process-wide reaper, starting its thread on first use.
    pub fn global() -> &'static Reaper {
        GLOBAL.get_or_init(|| {
            let reaper: &'static Reaper = Box::leak(Box::default());
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || reaper.run())
                .expect("the reaper thread starts");
            reaper
        })
    }

    /// Runs `spawn` (which returns what it spawned and the child's pid) with
    /// the registry locked, and registers the pid.
    pub fn spawn<T>(
        &self,
        spawn: impl FnOnce() -> io::Result<(T, u32)>,
    ) -> io::Result<(T, u32, oneshot::Receiver<ExitStatus>)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (spawned, pid) = spawn()?;
        let (tx, rx) = oneshot::channel();
        state.waiters.insert(pid as i32, tx);
        state.generation += 1;
        drop(state);
        self.spawned.notify_one();
        Ok((spawned, pid, rx))
    }

    fn run(&self) {
        let mut seen_generation = 0;
        loop {
            match rustix::process::waitid(
                WaitId::All,
                WaitidOptions::EXITED | WaitidOptions::NOWAIT,
            ) {
                Ok(_) => self.reap_all(),
                Err(Errno::INTR) => {}
                Err(Errno::CHILD) => {
                    let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                    while state.generation == seen_generation {
                        state = self.spawned.wait(state).unwrap_or_else(|e| e.into_inner());
                    }
                    seen_generation = state.generation;
                }
                Err(e) => {
                    crate::console::log(format_args!("reaper: waitid failed: {e}"));
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    fn reap_all(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
            if let Some(tx) = state.waiters.remove(&pid.as_raw_nonzero().get()) {
                let _ = tx.send(exit_status(status));
            }
        }
    }
}

/// A wait status as a shell reports it: the exit code, or 128 + the signal.
pub fn exit_status(status: WaitStatus) -> ExitStatus {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => ExitStatus {
            code: code as i32,
            signal: None,
        },
        (None, Some(sig)) => ExitStatus {
            code: 128 + sig as i32,
            signal: Some(sig as i32),
        },
        (None, None) => ExitStatus {
            code: 255,
            signal: None,
        },
    }
}

/// The pid as rustix wants it.
pub fn pid(raw: u32) -> Option<Pid> {
    Pid::from_raw(raw as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[tokio::test]
    async fn exit_codes_and_signals_are_reported_as_a_shell_would() {
        let reaper = Reaper::global();
        let (_, _, exited) = reaper
            .spawn(|| {
                let child = Command::new("sh").args(["-c", "exit 7"]).spawn()?;
                Ok(((), child.id()))
            })
            .unwrap();
        assert_eq!(
            exited.await.unwrap(),
            ExitStatus {
                code: 7,
                signal: None
            }
        );

        let (_, _, exited) = reaper
            .spawn(|| {
                let child = Command::new("sh").args(["-c", "kill -9 $$"]).spawn()?;
                Ok(((), child.id()))
            })
            .unwrap();
        assert_eq!(
            exited.await.unwrap(),
            ExitStatus {
                code: 137,
                signal: Some(9)
            }
        );
    }

    #[tokio::test]
    async fn a_child_that_exits_at_once_is_still_reported() {
        let reaper = Reaper::global();
        for _ in 0..20 {
            let (_, _, exited) = reaper
                .spawn(|| {
                    let child = Command::new("true").spawn()?;
                    Ok(((), child.id()))
                })
                .unwrap();
            assert_eq!(exited.await.unwrap().code, 0);
        }
    }
}
