//! Pseudo-terminals: allocating a master/slave pair and making the slave the
//! controlling terminal of a child process. Used by `banger-agent` for
//! `tty: true` execs; it owns no I/O on the master (the caller reads and
//! writes it) and spawns nothing itself (the caller spawns the prepared
//! [`Command`], so it keeps control of when and under which lock).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

/// A freshly allocated pseudo-terminal. Both ends are close-on-exec, so only
/// the child the slave is handed to (through its stdio) inherits it.
#[derive(Debug)]
pub struct Pty {
    /// The end the caller reads the terminal's output from and writes input to.
    pub master: OwnedFd,
    /// The end the child gets as stdin, stdout and stderr.
    pub slave: OwnedFd,
}

/// Opens `/dev/ptmx`, unlocks the slave and opens it, and sets the window
/// size when one is given.
pub fn open(size: Option<(u16, u16)>) -> io::Result<Pty> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if let Some((rows, cols)) = size {
        set_window_size(&master, rows, cols)?;
    }
    Ok(Pty { master, slave })
}

/// Sets the terminal's size (`TIOCSWINSZ`); the kernel sends `SIGWINCH` to
/// the terminal's foreground process group.
pub fn set_window_size(fd: impl AsFd, rows: u16, cols: u16) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        fd,
        Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// Prepares `cmd` to run on the terminal whose slave end is `slave`: the
/// slave becomes its stdin, stdout and stderr, and the child starts a new
/// session (so it leads its own process group, pgid = pid) whose controlling
/// terminal is that slave. The caller must drop `cmd` (and `slave`) after
/// spawning, or the master never sees the hang-up when the child exits.
pub fn attach_as_controlling_terminal(cmd: &mut Command, slave: &OwnedFd) -> io::Result<()> {
    cmd.stdin(Stdio::from(slave.try_clone()?));
    cmd.stdout(Stdio::from(slave.try_clone()?));
    cmd.stderr(Stdio::from(slave.try_clone()?));
    // SAFETY: the hook runs in the forked child before exec, after std has
    // dup'ed the slave onto fds 0-2. It makes two raw syscalls through rustix
    // (setsid, ioctl TIOCSCTTY on fd 0), which neither allocate nor take
    // locks, so it is async-signal-safe; converting an `Errno` into an
    // `io::Error` does not allocate either.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn opened_pty_reports_the_size_it_was_given() {
        let pty = open(Some((33, 101))).unwrap();
        let size = rustix::termios::tcgetwinsize(&pty.slave).unwrap();
        assert_eq!((size.ws_row, size.ws_col), (33, 101));
        assert!(rustix::termios::isatty(&pty.slave));
    }

    #[test]
    fn child_sees_the_slave_as_its_controlling_terminal() {
        let pty = open(None).unwrap();
        let mut cmd = Command::new("sh");
        // Opening /dev/tty fails without a controlling terminal.
        cmd.args(["-c", "test -t 0 && test -t 1 && tty && : < /dev/tty"]);
        attach_as_controlling_terminal(&mut cmd, &pty.slave).unwrap();
        let mut child = cmd.spawn().unwrap();
        drop(cmd);
        drop(pty.slave);
        let status = child.wait().unwrap();
        let mut out = Vec::new();
        let mut master = std::fs::File::from(pty.master);
        let mut buf = [0u8; 256];
        // The master reads EIO once the slave has no holders left.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert!(
            status.success(),
            "output: {}",
            String::from_utf8_lossy(&out)
        );
        assert!(
            String::from_utf8_lossy(&out).starts_with("/dev/pts/"),
            "{out:?}"
        );
    }
}
