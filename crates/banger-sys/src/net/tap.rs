//! Persistent tap devices: the host end of a `bridge`-mode guest NIC.
//!
//! A tap is created ahead of time (the daemon keeps a warm pool) and left
//! persistent, so creating a VM only has to attach one to the bridge and
//! hand its name to the engine. QEMU then opens it by name with
//! `-netdev tap,id=net0,ifname=<name>,script=no,downscript=no,vhost=off`.
//!
//! Creation, step by step (~0.3 ms measured):
//!
//! 1. open `/dev/net/tun`, which binds the file to the calling thread's
//!    network namespace;
//! 2. `TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and the name:
//!    creates the device, or attaches to an idle persistent tap of that name
//!    (so creating is idempotent);
//! 3. optionally `TUNSETOWNER`/`TUNSETGROUP`, so an engine running as that
//!    user may open it without privileges;
//! 4. `TUNSETPERSIST 1`, then close: the device outlives the file.
//!
//! Deletion is the reverse (`TUNSETIFF` on a fresh open, `TUNSETPERSIST 0`,
//! close) and costs ~20 ms, almost all of it the kernel unregistering the
//! device (an RCU grace period), so callers delete from a background task.
//! A tap that an engine still holds open cannot be deleted this way
//! ([`TapError::Busy`]); [`crate::net::link::Links::delete`] (`RTM_DELLINK`)
//! removes it regardless.
//!
//! A file closed here can outlive its close for a moment: a child another
//! thread is forking holds a copy of every descriptor until it execs (and
//! close-on-exec drops them). Until then the tap still counts as attached
//! and `TUNSETIFF` answers `EBUSY`, so steps 2 and the deletion's
//! `TUNSETIFF` retry `EBUSY` for up to [`BUSY_WAIT`].
//!
//! Not here: bridge membership and link state ([`crate::net::link`]), the
//! pool's policy (`banger-core`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use super::{IfNameError, validate_ifname};

const TUN_DEVICE: &str = "/dev/net/tun";

/// How long `EBUSY` may last before the tap counts as really in use: far
/// longer than any fork-to-exec window.
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Who may open a tap without `CAP_NET_ADMIN` (the kernel's tap owner and
/// group). `None` leaves that check unset: only privileged openers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapOptions {
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// Creates and deletes persistent taps. [`TunTaps`] is the real one;
/// [`crate::net::fake::FakeLinks`] implements it in memory.
pub trait Taps: Send + Sync {
    /// Creates the persistent tap `name`, or adopts an idle one of that name.
    fn create_tap(&self, name: &str, options: &TapOptions) -> Result<(), TapError>;
    /// Deletes the tap `name`; a name that does not exist is not an error.
    fn delete_tap(&self, name: &str) -> Result<(), TapError>;
}

/// Taps through `/dev/net/tun`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TunTaps;

impl Taps for TunTaps {
    fn create_tap(&self, name: &str, options: &TapOptions) -> Result<(), TapError> {
        create_tap(name, options)
    }

    fn delete_tap(&self, name: &str) -> Result<(), TapError> {
        delete_tap(name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    InvalidName(#[from] IfNameError),
    #[error("{TUN_DEVICE} cannot be opened: load the tun module (modprobe tun)")]
    NoTunDevice {
        #[source]
        source: io::Error,
    },
    #[error("{action} tap {name} needs CAP_NET_ADMIN: run bangerd as root or use --network user")]
    PermissionDenied {
        action: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap {name} is open in another process (a VM engine still running?): stop it first")]
    Busy {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} exists and is not a tap: delete it or choose another tap name")]
    NotATap {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{action} tap {name} failed")]
    Ioctl {
        action: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Creates the persistent tap `name` (see the module doc).
pub fn create_tap(name: &str, options: &TapOptions) -> Result<(), TapError> {
    validate_ifname(name)?;
    let action = "creating";
    let tun = open_tun(action, name)?;
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    attach(&tun, name, flags).map_err(|e| classify(action, name, e))?;
    if let Some(uid) = options.owner {
        ioctl_value(&tun, libc::TUNSETOWNER, uid.into()).map_err(|e| classify(action, name, e))?;
    }
    if let Some(gid) = options.group {
        ioctl_value(&tun, libc::TUNSETGROUP, gid.into()).map_err(|e| classify(action, name, e))?;
    }
    // Should this fail on a new device, closing `tun` removes it again.
    ioctl_value(&tun, libc::TUNSETPERSIST, 1).map_err(|e| classify(action, name, e))?;
    Ok(())
}

/// Deletes the tap `name`; an absent name is not an error.
pub fn delete_tap(name: &str) -> Result<(), TapError> {
    validate_ifname(name)?;
    if !exists(name) {
        return Ok(());
    }
    let action = "deleting";
    let tun = open_tun(action, name)?;
    // Attaching needs the same type (tap) and queue mode as the device had;
    // IFF_VNET_HDR is per open file and does not matter here.
    attach(&tun, name, libc::IFF_TAP | libc::IFF_NO_PI).map_err(|e| classify(action, name, e))?;
    ioctl_value(&tun, libc::TUNSETPERSIST, 0).map_err(|e| classify(action, name, e))?;
    // The device goes away when its last file closes: this one, here.
    drop(tun);
    Ok(())
}

/// Whether an interface called `name` exists in the calling thread's
/// network namespace (`if_nametoindex` opens its socket there; sysfs would
/// show the namespace `/sys` was mounted in instead).
fn exists(name: &str) -> bool {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(cname.as_ptr()) != 0 }
}

fn open_tun(action: &'static str, name: &str) -> Result<File, TapError> {
    // std opens with O_CLOEXEC, so engines spawned later do not inherit it.
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => TapError::PermissionDenied {
                action,
                name: name.to_string(),
                source,
            },
            _ => TapError::NoTunDevice { source },
        })
}

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags in the
/// union that makes the struct 40 bytes on 64-bit Linux.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// [`set_iff`], waiting out a transient `EBUSY` (see the module doc).
fn attach(tun: &File, name: &str, flags: libc::c_int) -> io::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_WAIT;
    loop {
        match set_iff(tun, name, flags) {
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn set_iff(tun: &File, name: &str, flags: libc::c_int) -> io::Result<()> {
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: flags as libc::c_short,
        _union_rest: [0; 22],
    };
    // validate_ifname guarantees at most 15 bytes, so the name stays
    // NUL-terminated.
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a properly sized and initialised `struct ifreq` that
    // lives for the duration of the call; the kernel reads and may write it.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The tun ioctls that take their argument by value.
fn ioctl_value(tun: &File, request: libc::Ioctl, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST/TUNSETOWNER/TUNSETGROUP read an integer argument
    // by value and touch no memory of ours.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), request, value) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn classify(action: &'static str, name: &str, source: io::Error) -> TapError {
    let name = name.to_string();
    match source.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => TapError::PermissionDenied {
            action,
            name,
            source,
        },
        Some(libc::EBUSY) => TapError::Busy { name, source },
        Some(libc::EINVAL) => TapError::NotATap { name, source },
        _ => TapError::Ioctl {
            action,
            name,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(std::mem::offset_of!(IfReq, flags), 16);
    }

    #[test]
    fn overlong_names_are_refused_before_any_syscall() {
        let err = create_tap("bgtap-0123456789", &TapOptions::default()).unwrap_err();
        assert!(matches!(err, TapError::InvalidName(_)), "{err:?}");
        assert!(err.to_string().contains("15-character limit"), "{err}");
        assert!(matches!(
            delete_tap("has space"),
            Err(TapError::InvalidName(_))
        ));
    }

    #[test]
    fn permission_errors_say_what_to_do() {
        let err = classify(
            "creating",
            "bgtap0",
            io::Error::from_raw_os_error(libc::EPERM),
        );
        assert_eq!(
            err.to_string(),
            "creating tap bgtap0 needs CAP_NET_ADMIN: run bangerd as root or use --network user"
        );
        let err = classify(
            "deleting",
            "bgtap0",
            io::Error::from_raw_os_error(libc::EBUSY),
        );
        assert!(matches!(err, TapError::Busy { .. }));
    }

    #[test]
    fn deleting_an_absent_tap_is_not_an_error() {
        // No syscall that needs privileges runs when the name is unknown.
        assert!(delete_tap("bgnotthere0").is_ok());
    }
}
