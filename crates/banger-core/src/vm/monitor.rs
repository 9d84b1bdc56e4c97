//! The monitor: the one writer of "this VM's engine is gone". Engines found
//! dead (a watcher saw the process exit, or a read noticed) are reported
//! here; the monitor takes the VM's lock, checks again, releases what the
//! boot made and records the VM: `failed`, quoting the console, when the
//! guest's kernel panicked (QEMU runs with `-no-reboot` and the guest with
//! `panic=-1`, so a panic ends the engine), else `stopped`. An engine that
//! banger stops is never reported as a death: stop and delete hold the
//! lock and record the VM first. Reads themselves never write.
//!
//! Owns reading a console for a panic ([`panic_report`]); the console tail
//! itself is `layout`'s.

use super::Lifecycle;
use banger_api::VmState;
use std::path::Path;
use std::sync::Weak;
use tokio::sync::mpsc;

/// What a console line says when the guest's kernel panicked ("Attempted
/// to kill init" is the panic of an agent that exited or never ran).
const PANIC_MARKS: [&str; 2] = ["Kernel panic", "Attempted to kill init"];
/// The console lines quoted before the panic line: what led to it (the
/// agent's last words, the sysrq, the oops), where the trace after it says
/// little to a user.
const LINES_BEFORE_PANIC: usize = 3;

/// The console's account of a kernel panic that ended the guest's last
/// boot: the panic line and the few before it. `None` when the console
/// does not end in one: only kernel lines (the trace) may follow the panic
/// line, with uptimes that never go back, since the console is appended to
/// across boots and an older boot's panic says nothing about this one.
pub(crate) fn panic_report(console: &Path) -> Option<String> {
    let lines = crate::layout::tail_lines(console, usize::MAX);
    let at = (0..lines.len()).find(|&i| {
        PANIC_MARKS.iter().any(|m| lines[i].contains(m)) && ends_this_boot(&lines[i..])
    })?;
    Some(lines[at.saturating_sub(LINES_BEFORE_PANIC)..=at].join(" | "))
}

/// True when `lines` (a panic line and what follows) hold no sign of a
/// later boot: no agent line, no kernel uptime lower than an earlier one.
fn ends_this_boot(lines: &[String]) -> bool {
    let mut last_uptime = 0.0;
    for line in lines {
        if line.starts_with("banger-agent") {
            return false;
        }
        if let Some(uptime) = kernel_uptime(line) {
            if uptime < last_uptime {
                return false;
            }
            last_uptime = uptime;
        }
    }
    true
}

/// The uptime a kernel line starts with, as in `[   12.345678] ...`.
fn kernel_uptime(line: &str) -> Option<f64> {
    let (stamp, _) = line.strip_prefix('[')?.split_once(']')?;
    stamp.trim().parse().ok()
}

/// An engine that is gone: the VM's id (its name can change: a standby
/// taken by a create, `standby.rs`) and, when known, the pid it had (a
/// report about an older boot of a VM that runs again is ignored).
#[derive(Debug)]
pub struct Exited {
    pub id: String,
    pub pid: Option<u32>,
}

pub(super) fn start(lifecycle: Weak<Lifecycle>, mut rx: mpsc::UnboundedReceiver<Exited>) {
    tokio::spawn(async move {
        while let Some(exit) = rx.recv().await {
            let Some(lc) = lifecycle.upgrade() else {
                return;
            };
            lc.record_exit(exit).await;
        }
    });
}

impl Lifecycle {
    async fn record_exit(&self, exit: Exited) {
        let Some(name) = self.name_of(&exit.id) else {
            return;
        };
        let lock = self.lock(&name);
        let _guard = lock.lock().await;
        let Ok(vm) = self.record(&name) else {
            return;
        };
        if vm.id != exit.id || vm.state != VmState::Running {
            return;
        }
        let running = self.runtime.get(&vm.name);
        if let (Some(r), Some(pid)) = (&running, exit.pid)
            && r.handles.pid != pid
        {
            return; // a report about an earlier boot
        }
        let alive = running.as_ref().is_some_and(|r| {
            self.engines
                .get(r.engine)
                .is_ok_and(|e| e.alive(&r.handles))
        });
        if alive {
            return;
        }
        let panic = self
            .engine(&vm)
            .ok()
            .and_then(|e| panic_report(&e.console_log(&self.dir(&vm))));
        let (state, last_error) = match panic {
            Some(report) => (
                VmState::Failed,
                Some(format!("the guest stopped unexpectedly: {report}")),
            ),
            None => (VmState::Stopped, vm.last_error.clone()),
        };
        tracing::info!(vm = %vm.name, state = %state, error = last_error.as_deref().unwrap_or(""), "engine is gone; recording the vm");
        self.release_runtime(&vm);
        if let Err(e) = self
            .store
            .set_vm_state(&vm.name, state, last_error.as_deref())
        {
            tracing::error!(vm = %vm.name, error = %crate::error::chain(&e), "cannot record the vm's end");
        }
    }

    /// Waits until the monitor has handled every report sent so far (tests).
    #[cfg(test)]
    pub(crate) async fn settle(&self) {
        for _ in 0..200 {
            let pending = self.store.vms().unwrap_or_default().into_iter().any(|v| {
                v.state == VmState::Running
                    && !self.runtime.get(&v.name).is_some_and(|r| {
                        self.engines
                            .get(r.engine)
                            .is_ok_and(|e| e.alive(&r.handles))
                    })
            });
            if !pending {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Harness, succeeded};
    use banger_api::NetworkMode;

    /// The console of a sysrq crash under a quiet kernel command line.
    const SYSRQ_CRASH: &str = "\
banger-agent: ready
banger-agent: host connected
[   42.100000] sysrq: Trigger a crash
[   42.100100] Kernel panic - not syncing: sysrq triggered crash
[   42.100200] CPU: 0 PID: 130 Comm: sh Not tainted 6.1.0-27-cloud-amd64 #1  Debian 6.1.115-1
[   42.100300] Call Trace:
[   42.100400]  <TASK>
[   42.100500]  dump_stack_lvl+0x44/0x5c
[   42.100600]  </TASK>
[   42.100700] Kernel Offset: disabled
";

    fn console(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_panic_is_reported_by_its_line_and_what_led_to_it() {
        let (_dir, path) = console(SYSRQ_CRASH);
        assert_eq!(
            panic_report(&path).unwrap(),
            "banger-agent: ready | banger-agent: host connected | \
             [   42.100000] sysrq: Trigger a crash | \
             [   42.100100] Kernel panic - not syncing: sysrq triggered crash"
        );
    }

    #[test]
    fn an_agent_that_exits_is_reported_as_killing_init() {
        let (_dir, path) = console(
            "banger-agent: fatal: cannot mount /dev/vda: No such device\n\
             [    1.5] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n\
             [    1.6] Kernel Offset: disabled\n",
        );
        let report = panic_report(&path).unwrap();
        assert!(report.starts_with("banger-agent: fatal"), "{report}");
        assert!(report.ends_with("exitcode=0x00000100"), "{report}");
    }

    #[test]
    fn an_older_boots_panic_is_not_this_boots() {
        // The console is appended to across boots: a panic, then a boot
        // that came up and powered off (agent lines), or one that died
        // early (its kernel uptimes start over).
        let (_dir, path) = console(&format!("{SYSRQ_CRASH}banger-agent: mounted /dev\n"));
        assert_eq!(panic_report(&path), None);
        let (_dir, path) = console(&format!("{SYSRQ_CRASH}[    0.384057] PCI: Fatal\n"));
        assert_eq!(panic_report(&path), None);
        let (_dir, path) = console("banger-agent: powering off\n");
        assert_eq!(panic_report(&path), None);
    }

    #[tokio::test]
    async fn an_engine_that_exits_after_a_panic_records_the_vm_failed_with_the_console() {
        let h = Harness::new();
        assert!(succeeded(&h.create("web", NetworkMode::Bridge).await));
        let pid = h.services.vms.show("web").unwrap().pid.unwrap();
        let log = h.services.vms.console_log("web").unwrap();
        std::fs::write(&log, SYSRQ_CRASH).unwrap();
        h.engine.crash(pid);
        h.services.vms.settle().await;
        let vm = h.services.vms.show("web").unwrap();
        assert_eq!(vm.state, VmState::Failed);
        let error = vm.last_error.unwrap();
        assert!(
            error.starts_with("the guest stopped unexpectedly: ")
                && error.ends_with("Kernel panic - not syncing: sysrq triggered crash"),
            "{error}"
        );
        assert_eq!(h.dns_names().len(), 0, "the boot is released");
    }

    #[tokio::test]
    async fn an_engine_that_exits_without_a_panic_records_the_vm_stopped() {
        let h = Harness::new();
        assert!(succeeded(&h.create("web", NetworkMode::Bridge).await));
        let pid = h.services.vms.show("web").unwrap().pid.unwrap();
        let log = h.services.vms.console_log("web").unwrap();
        std::fs::write(&log, "banger-agent: powering off\n").unwrap();
        h.engine.crash(pid);
        h.services.vms.settle().await;
        let vm = h.services.vms.show("web").unwrap();
        assert_eq!((vm.state, vm.last_error), (VmState::Stopped, None));
    }
}
