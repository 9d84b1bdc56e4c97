//! Guest-side system calls that `banger-agent` (the guest's PID 1) needs and
//! that rustix offers no safe wrapper for. Owns only those calls; mounts,
//! reboot and module loading go through rustix's safe API in the agent.

use std::io;

use rustix::process::Signal;

/// `kill(-1, sig)`: sends `sig` to every process the caller may signal,
/// except itself and PID 1. As PID 1 in a guest this is every user process;
/// on a host it would be every process of the user, so only call it as the
/// guest's init.
pub fn kill_all(sig: Signal) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(-1, sig as libc::c_int) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
