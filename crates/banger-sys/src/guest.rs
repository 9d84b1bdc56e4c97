//! Guest-side system calls that `banger-agent` (the guest's PID 1) needs and
//! that rustix offers no safe wrapper for. Owns only those calls; mounts,
//! reboot and module loading go through rustix's safe API in the agent.
//! Each refuses nothing itself: the agent calls them only as the guest's
//! init (they would change the host's clock and RNG as well as a guest's).

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

/// `RNDADDENTROPY`, `_IOW('R', 0x03, int[2])` in `<linux/random.h>`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`, `_IO('R', 0x07)` (Linux 4.17+).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Mixes `bytes` into the kernel's input pool crediting them as full
/// entropy (`RNDADDENTROPY` on `/dev/urandom`, needs `CAP_SYS_ADMIN`), then
/// reseeds the CRNG from the pool at once (`RNDRESEEDCRNG`): after it,
/// `getrandom` and `/dev/urandom` no longer follow the state the guest had
/// before. Only give it bytes from a cryptographic source.
pub fn add_entropy_and_reseed(bytes: &[u8]) -> io::Result<()> {
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let words = bytes.len().div_ceil(4);
    let mut info = vec![0u32; 2 + words];
    let count = i32::try_from(bytes.len().saturating_mul(8))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    info[0] = count as u32;
    info[1] = bytes.len() as u32;
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(word);
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&random);
    // SAFETY: `info` is a live, 4-byte aligned rand_pool_info whose
    // buf_size bytes of buffer follow its header; the kernel only reads it.
    let rc = unsafe { libc::ioctl(fd, RNDADDENTROPY as _, info.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(fd, RNDRESEEDCRNG as _) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Steps `CLOCK_REALTIME` to `secs`.`nanos` after the Unix epoch.
pub fn set_wall_clock(secs: i64, nanos: u32) -> io::Result<()> {
    if nanos >= 1_000_000_000 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as _,
    };
    // SAFETY: `ts` is a valid timespec the kernel only reads.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
