//! Powering the guest off or rebooting it, as its init: stop every process,
//! unmount the work disk, make the root read-only, then ask the kernel.
//! Owns that sequence behind the [`Power`] trait, so the request path is
//! tested with a fake and never reboots the machine running the tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, UnmountFlags};
use rustix::process::Signal;
use rustix::system::RebootCommand;

use crate::console::{log, step};

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Whether the shutdown sequence has begun; supervisors (`sshd.rs`) then
/// stop restarting what it stops.
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::SeqCst)
}

/// Ends the guest's life.
pub trait Power: Send + Sync {
    /// Runs the whole shutdown sequence; returns only if it could not.
    fn shutdown(&self, reboot: bool);
}

/// The real thing; refuses to act unless this process is PID 1.
#[derive(Debug, Default)]
pub struct GuestPower;

impl Power for GuestPower {
    fn shutdown(&self, reboot: bool) {
        if !crate::is_init() {
            log(format_args!("not PID 1: ignoring the shutdown request"));
            return;
        }
        power_off(reboot);
    }
}

/// Stops everything and powers off (or restarts). Only for PID 1.
pub fn power_off(reboot: bool) -> ! {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    log(format_args!(
        "{}",
        if reboot { "rebooting" } else { "powering off" }
    ));
    rustix::fs::sync();
    let _ = step("stopped all processes", || -> Result<(), Lingering> {
        let _ = banger_sys::guest::kill_all(Signal::Term);
        if wait_for_other_processes(Duration::from_secs(2)) {
            return Ok(());
        }
        let left = Lingering(other_user_processes());
        let _ = banger_sys::guest::kill_all(Signal::Kill);
        wait_for_other_processes(Duration::from_millis(500));
        Err(left)
    });
    if let Err(rustix::io::Errno::BUSY) = rustix::mount::unmount("/root", UnmountFlags::empty()) {
        let _ = rustix::mount::unmount("/root", UnmountFlags::DETACH);
    }
    if let Err(e) = rustix::mount::mount_remount("/", MountFlags::RDONLY, "") {
        log(format_args!("remounting / read-only failed: {e}"));
    }
    rustix::fs::sync();
    let cmd = if reboot {
        RebootCommand::Restart
    } else {
        RebootCommand::PowerOff
    };
    if let Err(e) = rustix::system::reboot(cmd) {
        log(format_args!("reboot({cmd:?}) failed: {e}"));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Processes that outlived SIGTERM, named in the log before SIGKILL.
#[derive(Debug, thiserror::Error)]
#[error("still running after SIGTERM, sent SIGKILL: {}", .0.join(", "))]
struct Lingering(Vec<String>);

/// Waits until no user process but us is left; `false` on timeout.
fn wait_for_other_processes(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if other_user_processes().is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live processes other than PID 1 with a command line (kernel threads and
/// zombies have none), as `pid (name)`.
fn other_user_processes() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1)
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()))
        .map(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{pid} ({})", name.trim())
        })
        .collect()
}
