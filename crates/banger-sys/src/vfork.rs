//! Starting a program with `posix_spawn(3)`: glibc starts the child with
//! `clone(CLONE_VM | CLONE_VFORK)`, so the parent's page tables are not
//! copied and its pages are not made copy-on-write until the child execs,
//! as a `fork` does. `std::process::Command` only takes this path without a
//! working directory or a `pre_exec` hook, and the guest agent needs both
//! (a command's cwd, every signal back at its default); under TCG the fork
//! path cost its first command a few ms and every later one ~2 ms.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What to start.
#[derive(Debug)]
pub struct Spawn<'a> {
    /// The program's path (no `PATH` search).
    pub program: &'a Path,
    /// Its whole argument vector, `argv[0]` first.
    pub argv: &'a [String],
    /// Its whole environment.
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    /// Its stdin, stdout and stderr.
    pub stdio: [BorrowedFd<'a>; 3],
    /// In a process group of its own.
    pub process_group: bool,
}

/// Starts `what`; returns its pid. The child starts with an empty signal
/// mask and every signal at its default action (ignored ones included:
/// they would survive exec). A program that cannot be executed (missing,
/// not executable, a bad cwd) is this call's error, as with `Command`.
pub fn spawn(what: &Spawn) -> io::Result<u32> {
    let c = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{s:?} contains a NUL byte"),
            )
        })
    };
    let program = c(what.program.as_os_str())?;
    let cwd = c(what.cwd.as_os_str())?;
    let argv = what
        .argv
        .iter()
        .map(|a| c(OsStr::new(a)))
        .collect::<io::Result<Vec<_>>>()?;
    let env = what
        .env
        .iter()
        .map(|(k, v)| c(OsStr::new(&format!("{k}={v}"))))
        .collect::<io::Result<Vec<_>>>()?;
    let mut argv_ptrs: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr() as *mut _).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut env_ptrs: Vec<*mut libc::c_char> = env.iter().map(|e| e.as_ptr() as *mut _).collect();
    env_ptrs.push(std::ptr::null_mut());

    let mut actions = FileActions::new()?;
    for (target, fd) in what.stdio.iter().enumerate() {
        // SAFETY: `actions` is initialised; the descriptors are only
        // recorded here and used in the child.
        check(unsafe {
            libc::posix_spawn_file_actions_adddup2(
                &mut actions.0,
                fd.as_raw_fd(),
                target as libc::c_int,
            )
        })?;
    }
    // SAFETY: as above; glibc copies the path.
    check(unsafe { libc::posix_spawn_file_actions_addchdir_np(&mut actions.0, cwd.as_ptr()) })?;

    let mut attr = Attr::new()?;
    let mut flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
    if what.process_group {
        flags |= libc::POSIX_SPAWN_SETPGROUP;
    }
    // SAFETY: `attr` is initialised and the sets are valid sigset_ts, made
    // by sigemptyset/sigfillset before use.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigfillset(&mut all);
        let attr = &mut attr.0;
        check(libc::posix_spawnattr_setsigmask(attr, &none))?;
        check(libc::posix_spawnattr_setsigdefault(attr, &all))?;
        check(libc::posix_spawnattr_setpgroup(attr, 0))?;
        check(libc::posix_spawnattr_setflags(attr, flags as libc::c_short))?;
    }

    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is to a live, NUL-terminated string or a
    // null-terminated array of them, all outliving the call; `actions` and
    // `attr` are initialised.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            &actions.0,
            &attr.0,
            argv_ptrs.as_ptr(),
            env_ptrs.as_ptr(),
        )
    })?;
    Ok(pid as u32)
}

/// posix_spawn's functions return an errno value, not -1.
fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        // SAFETY: zeroed storage is what posix_spawn_file_actions_init
        // initialises; it is destroyed in Drop only after a successful init.
        let mut actions = FileActions(unsafe { std::mem::zeroed() });
        check(unsafe { libc::posix_spawn_file_actions_init(&mut actions.0) })?;
        Ok(actions)
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct Attr(libc::posix_spawnattr_t);

impl Attr {
    fn new() -> io::Result<Attr> {
        // SAFETY: as for FileActions.
        let mut attr = Attr(unsafe { std::mem::zeroed() });
        check(unsafe { libc::posix_spawnattr_init(&mut attr.0) })?;
        Ok(attr)
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsFd, OwnedFd};

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = std::io::pipe().unwrap();
        (r.into(), w.into())
    }

    fn wait(pid: u32) -> i32 {
        let mut status = 0;
        // SAFETY: pid is our child; status is a valid out pointer.
        let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        assert_eq!(rc, pid as i32);
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn the_child_gets_its_argv_env_cwd_stdio_and_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let (out_r, out_w) = pipe();
        let (in_r, _in_w) = pipe();
        let null = std::fs::File::open("/dev/null").unwrap();
        let argv = vec![
            "sh".to_string(),
            "-c".into(),
            "echo \"$0 $GREETING $(pwd) $(ps -o pgid= -p $$ | tr -d ' ') $$\"; exit 7".into(),
        ];
        let env = vec![
            ("GREETING".to_string(), "hello there".to_string()),
            ("PATH".into(), "/usr/bin:/bin".into()),
        ];
        let pid = spawn(&Spawn {
            program: Path::new("/bin/sh"),
            argv: &argv,
            env: &env,
            cwd: dir.path(),
            stdio: [in_r.as_fd(), out_w.as_fd(), null.as_fd()],
            process_group: true,
        })
        .unwrap();
        drop(out_w);
        let mut text = String::new();
        std::fs::File::from(out_r)
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(wait(pid), 7);
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(
            text.trim_end(),
            format!("sh hello there {} {pid} {pid}", cwd.display())
        );
    }

    #[test]
    fn ignored_signals_are_back_at_their_default_in_the_child() {
        let (out_r, out_w) = pipe();
        let null = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: SIG_IGN for SIGQUIT in this test process; the child must
        // not inherit it.
        let old = unsafe { libc::signal(libc::SIGQUIT, libc::SIG_IGN) };
        let argv = vec![
            "sh".to_string(),
            "-c".into(),
            "grep SigIgn /proc/self/status".into(),
        ];
        let pid = spawn(&Spawn {
            program: Path::new("/bin/sh"),
            argv: &argv,
            env: &[],
            cwd: Path::new("/"),
            stdio: [null.as_fd(), out_w.as_fd(), null.as_fd()],
            process_group: false,
        });
        // SAFETY: restores what was there.
        unsafe { libc::signal(libc::SIGQUIT, old) };
        let pid = pid.unwrap();
        drop(out_w);
        let mut text = String::new();
        std::fs::File::from(out_r)
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(wait(pid), 0);
        let mask =
            u64::from_str_radix(text.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
        assert_eq!(mask & (1 << (libc::SIGQUIT - 1)), 0, "{text}");
    }

    #[test]
    fn a_missing_program_or_cwd_is_the_callers_error() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let argv = vec!["nope".to_string()];
        let base = |program: &'static str, cwd: &'static str| {
            spawn(&Spawn {
                program: Path::new(program),
                argv: &argv,
                env: &[],
                cwd: Path::new(cwd),
                stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
                process_group: false,
            })
        };
        let e = base("/nonexistent/program", "/").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let e = base("/bin/true", "/nonexistent/dir").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }
}
