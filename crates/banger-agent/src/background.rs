//! The guest's own work that no request waits for (emptying the initramfs,
//! sshd and a first boot's host key) holds back until the host's first
//! command has run: [`SETTLE`] after an exec, session or connection
//! request ends, or [`GRACE`] after the agent began serving if none has.
//! That work runs at `SCHED_IDLE`, but under TCG idle priority is not
//! enough: every switch between it and the command flushes QEMU's TLB and
//! jump cache, and a kernel path it is in runs to its next preemption
//! point. Started right at ready, it cost `vm run --rm -- true` 25-45 ms
//! of its first exec; started the moment that exec ended, its first steps
//! (on the agent's own thread) delayed the exit's frame as much. The
//! settling time lets the host read the exit and delete the VM, or send
//! its next command, first. A connection to sshd's port is the host wanting
//! sshd: it opens the gate at once ([`Gate::open_now`]).

use std::time::Duration;

use tokio::sync::watch;

/// How long after ready the background work starts when no command came.
pub const GRACE: Duration = Duration::from_secs(1);
/// How long after the first command ended it starts.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Whether the background work may start: closed, open (after settling)
/// or open now.
#[derive(Debug)]
pub struct Gate(watch::Sender<State>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Closed,
    Open,
    Now,
}

impl Default for Gate {
    fn default() -> Self {
        Gate(watch::channel(State::Closed).0)
    }
}

impl Gate {
    /// Lets the work start once settled (a command ended).
    pub fn open(&self) {
        self.0.send_if_modified(|s| {
            let was = *s;
            *s = was.max(State::Open);
            *s != was
        });
    }

    /// Lets the work start without settling (the host waits for it).
    pub fn open_now(&self) {
        self.0.send_replace(State::Now);
    }

    pub fn is_open(&self) -> bool {
        *self.0.borrow() != State::Closed
    }

    /// Returns `settle` after the gate opens (at once if, or as soon as,
    /// it opens now), or after `grace` if it has not opened by then.
    pub async fn wait(&self, grace: Duration, settle: Duration) {
        let mut state = self.0.subscribe();
        if tokio::time::timeout(grace, state.wait_for(|s| *s != State::Closed))
            .await
            .is_ok()
        {
            tokio::select! {
                _ = tokio::time::sleep(settle) => {}
                _ = state.wait_for(|s| *s == State::Now) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    const SHORT: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn with_no_command_the_work_waits_out_the_grace() {
        let gate = Gate::default();
        let start = Instant::now();
        gate.wait(SHORT, Duration::from_secs(60)).await;
        assert!(start.elapsed() >= SHORT);
        assert!(start.elapsed() < Duration::from_secs(30), "no settling");
    }

    #[tokio::test]
    async fn a_command_ending_lets_the_work_start_once_settled() {
        let gate = Arc::new(Gate::default());
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move {
                gate.wait(Duration::from_secs(60), SHORT).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!gate.is_open());
        let opened = Instant::now();
        gate.open();
        let started = waiter.await.unwrap();
        assert!(started >= opened + SHORT, "settled first");
        assert!(started < opened + Duration::from_secs(10));
        // Open stays open.
        let start = Instant::now();
        gate.wait(Duration::from_secs(60), Duration::ZERO).await;
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn opening_now_cuts_the_settling_short() {
        let gate = Arc::new(Gate::default());
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move {
                gate.wait(Duration::from_secs(60), Duration::from_secs(60))
                    .await;
                Instant::now()
            }
        });
        gate.open();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "still settling");
        let opened = Instant::now();
        gate.open_now();
        let started = waiter.await.unwrap();
        assert!(started < opened + Duration::from_secs(10));
        gate.open();
        let start = Instant::now();
        gate.wait(Duration::from_secs(60), Duration::from_secs(60))
            .await;
        assert!(start.elapsed() < Duration::from_secs(10), "now stays now");
    }
}
