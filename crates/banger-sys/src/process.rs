//! Process inspection and signalling through `/proc` and `kill(2)`: is a pid
//! alive (zombies count as dead: they hold no resources), what is its command
//! line, who is it (executable, uid, arguments: [`identity`]), send it a
//! signal. Spawning lives in [`crate::command`] (run to
//! completion) and [`crate::spawn`] (long-lived or streaming children);
//! this module never forks.

use std::path::{Path, PathBuf};

pub use rustix::process::Signal;

/// True when `pid` names a live process (not a zombie). A process counts
/// as live while any of its threads runs: after SIGKILL the leader can show
/// as a zombie while other threads still hold its files and sockets.
pub fn alive(pid: u32) -> bool {
    !live_tasks(pid).is_empty()
}

/// One process, told apart from a later one that reuses its pid by the
/// moment it started (`/proc/<pid>/stat`'s 22nd field, clock ticks after
/// boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: u32,
    pub start: u64,
}

impl ProcessRef {
    /// `pid` as it is now, or `None` when no live process has it.
    pub fn of(pid: u32) -> Option<ProcessRef> {
        let start = start_ticks(pid)?;
        alive(pid).then_some(ProcessRef { pid, start })
    }

    /// Whether this very process still runs.
    pub fn alive(&self) -> bool {
        ProcessRef::of(self.pid).is_some_and(|now| now == *self)
    }

    /// A pidfd of this process, readable once it has exited; `None` when
    /// it is gone already (its pid free, or another process's).
    pub fn pidfd(&self) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
        let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) else {
            return Ok(None);
        };
        let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // Checked after the open: the pidfd now holds whichever process
        // has the pid, and this says it is the one we mean.
        Ok(self.alive().then_some(fd))
    }
}

/// When `pid` started, in clock ticks after boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// `/proc/<pid>/stat`'s starttime: the 22nd field, the 20th after the
/// command name (which may hold spaces and parentheses).
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The command name of a live `pid` (`/proc/<pid>/comm`, at most 15
/// bytes): what is left to tell a process by while it exits, when its
/// executable link and arguments are already gone.
pub fn comm(pid: u32) -> Option<String> {
    if !alive(pid) {
        return None;
    }
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim_end().to_string())
}

/// Opens the memfds (`memfd_create` files, such as a VM's guest RAM) that
/// `pid` has open. While these stay open, the memory in them outlives the
/// process: its exit only unmaps them, and whoever closes the last one frees
/// the pages. Files that cannot be opened are skipped.
pub fn open_memfds(pid: u32) -> Vec<std::fs::File> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:"))
        })
        .filter_map(|e| std::fs::File::open(e.path()).ok())
        .collect()
}

/// The `/proc` directories of `pid`'s threads that have not exited: under
/// `/proc/<pid>/task`, or `/proc/<pid>` itself where that is unreadable.
fn live_tasks(pid: u32) -> Vec<PathBuf> {
    let leader = PathBuf::from(format!("/proc/{pid}"));
    let Ok(tasks) = std::fs::read_dir(leader.join("task")) else {
        return [leader].into_iter().filter(|d| stat_is_live(d)).collect();
    };
    tasks
        .flatten()
        .map(|t| t.path())
        .filter(|d| stat_is_live(d))
        .collect()
}

/// Whether `<dir>/stat` shows a state other than zombie or dead.
fn stat_is_live(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(
                stat[i + 1..].trim_start().chars().next(),
                Some('Z') | Some('X') | None
            ),
            None => false,
        },
        Err(_) => false,
    }
}

/// The argv of `pid`, or `None` when it is gone or unreadable.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    read_cmdline(&PathBuf::from(format!("/proc/{pid}")))
}

fn read_cmdline(dir: &Path) -> Option<Vec<String>> {
    let raw = std::fs::read(dir.join("cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// True when `pid` is alive and one of its arguments mentions `needle`
/// (a socket path unique to one VM), so a recycled pid is never mistaken
/// for a VM's engine. The arguments are read from a live thread: a zombie
/// leader's own `cmdline` is empty while its other threads still run.
pub fn alive_with_arg(pid: u32, needle: &str) -> bool {
    live_tasks(pid)
        .iter()
        .any(|task| read_cmdline(task).is_some_and(|args| args.iter().any(|a| a.contains(needle))))
}

/// Who a live process is: what it runs, as whom, with which arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The executable it runs. A binary replaced on disk since (a package
    /// upgrade) keeps its old path here; see `exe_deleted`.
    pub exe: PathBuf,
    /// The kernel marks the executable's path as deleted (` (deleted)`).
    pub exe_deleted: bool,
    /// Its real and effective uids.
    pub uid: u32,
    pub euid: u32,
    pub args: Vec<String>,
}

/// The [`Identity`] of `pid`, read from one of its live threads (a zombie
/// leader has no executable or arguments left while its other threads
/// run), or `None` when it is gone or not ours to inspect.
pub fn identity(pid: u32) -> Option<Identity> {
    if pid == 0 {
        return None;
    }
    live_tasks(pid).iter().find_map(|task| read_identity(task))
}

fn read_identity(dir: &Path) -> Option<Identity> {
    let link = std::fs::read_link(dir.join("exe")).ok()?;
    let (exe, exe_deleted) = match link.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(p) => (PathBuf::from(p), true),
        None => (link, false),
    };
    let (uid, euid) = parse_uids(&std::fs::read_to_string(dir.join("status")).ok()?)?;
    Some(Identity {
        exe,
        exe_deleted,
        uid,
        euid,
        args: read_cmdline(dir)?,
    })
}

/// The real and effective uids from a `/proc/<pid>/status` text.
fn parse_uids(status: &str) -> Option<(u32, u32)> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some((ids.next()??, ids.next()??))
}

/// Live processes of the calling user with an argument that names a path
/// starting with `dir` (a directory only this user can use, ending in
/// `/`; see [`names_path_in`]), with their arguments. For finding what a
/// killed daemon left running.
pub fn with_path_arg(dir: &str) -> Vec<(u32, Vec<String>)> {
    let me = euid();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own_pid())
        .filter_map(|pid| {
            let id = identity(pid)?;
            (id.uid == me && id.args.iter().any(|a| names_path_in(a, dir)))
                .then_some((pid, id.args))
        })
        .collect()
}

/// True when `arg` names a path that starts with `dir`: `dir` begins the
/// argument or a value in it (after `=`, `:` or `,`, as in QEMU's
/// `path=/…` and `unix:/…`). A longer path that merely ends with `dir`
/// does not count: another instance's `/tmp/x/run/banger/vms/…` is not
/// under `/run/banger/vms/`, and its processes are not this one's to kill.
pub fn names_path_in(arg: &str, dir: &str) -> bool {
    !dir.is_empty()
        && arg
            .match_indices(dir)
            .any(|(at, _)| at == 0 || matches!(arg.as_bytes()[at - 1], b'=' | b':' | b','))
}

/// Sends `signal` to `pid`; a pid that is already gone is not an error.
pub fn signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return Ok(());
    };
    match rustix::process::kill_process(pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes `cmd`'s child start with every standard signal at its default
/// action, whatever this process ignores: ignored signals survive exec, and
/// a process a shell started in the background ignores SIGINT and SIGQUIT,
/// so without this a guest command would shrug off the user's Ctrl-C.
/// (std already empties the child's signal mask.)
pub fn default_signals_on_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the hook runs in the forked child before exec. It only calls
    // `signal(2)`, which is async-signal-safe, allocates nothing and takes
    // no lock; SIGKILL and SIGSTOP are skipped (they cannot be changed).
    unsafe {
        cmd.pre_exec(|| {
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            Ok(())
        });
    }
}

/// Moves the calling thread to `SCHED_IDLE`: it runs only when no other
/// thread wants the CPU, for work nothing waits on.
pub fn run_only_when_idle() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0
    // is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The calling process's effective uid.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The calling process's pid.
pub fn own_pid() -> u32 {
    std::process::id()
}

/// Free bytes for unprivileged users on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail * st.f_frsize)
}

/// The host's TSC rate in kHz as the kernel reports it (`cpu MHz` of the
/// first CPU in `/proc/cpuinfo`), used for `tsc_early_khz` under TCG.
pub fn tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_mhz(&info).map(|mhz| (mhz * 1000.0).round() as u64)
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<f64> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether `/dev/kvm` can be opened read-write by this process.
pub fn kvm_openable() -> Result<(), std::io::Error> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_names_a_live_process_and_nothing_for_a_gone_one() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert_eq!(comm(child.id()).as_deref(), Some("sleep"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(comm(child.id()), None);
    }

    #[test]
    fn a_process_ref_knows_its_process_and_its_pidfd_says_when_it_ends() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = ProcessRef::of(child.id()).expect("a live child");
        assert!(me.alive());
        let later = ProcessRef {
            start: me.start + 1,
            ..me
        };
        assert!(!later.alive(), "another start is another process");
        assert!(later.pidfd().unwrap().is_none());
        let fd = me.pidfd().unwrap().expect("a pidfd of a live process");
        let readable = |fd: &std::os::fd::OwnedFd| {
            let mut p = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
            rustix::event::poll(&mut p, 0).unwrap() == 1
        };
        assert!(!readable(&fd), "not readable while it runs");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(readable(&fd), "readable once it has exited");
        assert!(!me.alive());
        assert_eq!(ProcessRef::of(child.id()), None);
    }

    #[test]
    fn the_start_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(98765));
        assert_eq!(parse_start_ticks("42 (x) S 1"), None);
    }

    /// The child's ignored-signal mask, from `/proc/self/status`.
    fn child_sigign(reset: bool) -> u64 {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "grep SigIgn /proc/self/status"]);
        if reset {
            default_signals_on_exec(&mut cmd);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        u64::from_str_radix(text.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap()
    }

    #[test]
    fn a_child_gets_default_signals_whatever_its_parent_ignores() {
        let quit = 1u64 << (libc::SIGQUIT - 1);
        // SAFETY: SIGQUIT is neither sent nor handled anywhere in these
        // tests; ignoring it for a moment changes nothing else.
        unsafe { libc::signal(libc::SIGQUIT, libc::SIG_IGN) };
        let (inherited, reset) = (child_sigign(false), child_sigign(true));
        unsafe { libc::signal(libc::SIGQUIT, libc::SIG_DFL) };
        assert_ne!(
            inherited & quit,
            0,
            "without the reset the child ignores SIGQUIT"
        );
        assert_eq!(reset & quit, 0, "with it the child does not");
    }

    #[test]
    fn memfds_are_found_and_opened_to_the_same_memory() {
        use std::io::{Read, Seek, Write};
        let fd = rustix::fs::memfd_create("banger-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut mine = std::fs::File::from(fd);
        mine.write_all(b"guest ram").unwrap();
        let held = open_memfds(own_pid());
        let mut found = false;
        for mut f in held {
            let mut text = String::new();
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            let _ = f.read_to_string(&mut text);
            found |= text == "guest ram";
        }
        assert!(found, "the memfd this process made is among them");
        assert!(open_memfds(u32::MAX).is_empty(), "no such process");
    }

    #[test]
    fn an_idle_thread_says_so_in_its_policy() {
        let policy = std::thread::spawn(|| {
            run_only_when_idle().unwrap();
            // SAFETY: no arguments; reads the calling thread's policy.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        // SAFETY: as above, for this thread, which the call left alone.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }

    #[test]
    fn own_process_is_alive_and_has_a_cmdline() {
        assert!(alive(own_pid()));
        assert!(cmdline(own_pid()).unwrap()[0].contains("banger_sys"));
    }

    #[test]
    fn a_process_lives_while_any_thread_runs_though_its_leader_is_a_zombie() {
        // The main thread exits first; another keeps running for a moment.
        let script = "import threading,time,ctypes\n\
            t=threading.Thread(target=time.sleep,args=(1.0,)); t.start()\n\
            ctypes.CDLL(None).pthread_exit(None)";
        let Ok(mut child) = std::process::Command::new("python3")
            .args(["-c", script, "banger-needle"])
            .spawn()
        else {
            crate::skip_test("needs python3");
            return;
        };
        let pid = child.id();
        let leader_zombie = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit(')').next().unwrap().trim_start().starts_with('Z'))
        };
        let t0 = std::time::Instant::now();
        while !leader_zombie() && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(leader_zombie(), "the leader exited first");
        assert!(alive(pid), "a thread still runs");
        assert!(alive_with_arg(pid, "banger-needle"));
        assert!(!alive_with_arg(pid, "someone-else"));
        child.wait().unwrap();
        assert!(!alive(pid));
    }

    #[test]
    fn a_process_identity_names_its_executable_uid_and_arguments() {
        let mut child = std::process::Command::new("sleep")
            .args(["30", "7"])
            .spawn()
            .unwrap();
        // Right after fork the child can still run our own image: wait for the exec.
        let t0 = std::time::Instant::now();
        let id = loop {
            let id = identity(child.id());
            if id.as_ref().is_some_and(|id| id.args[0] == "sleep") || t0.elapsed().as_secs() > 5 {
                break id.unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let sleep = std::fs::canonicalize(crate::command::which("sleep").unwrap()).unwrap();
        assert_eq!(id.exe, sleep);
        assert!(!id.exe_deleted);
        assert_eq!((id.uid, id.euid), (euid(), euid()));
        assert_eq!(id.args, ["sleep", "30", "7"]);
        assert_eq!(identity(child.id()), None, "a reaped child has no identity");
        assert_eq!(identity(0), None);
    }

    #[test]
    fn uids_are_read_from_status() {
        let status = "Name:\tqemu\nUmask:\t0022\nUid:\t1000\t1001\t1000\t1000\nGid:\t5\n";
        assert_eq!(parse_uids(status), Some((1000, 1001)));
        assert_eq!(parse_uids("Name:\tx\n"), None);
    }

    #[test]
    fn a_path_is_named_where_an_argument_or_a_value_in_it_begins() {
        let dir = "/run/banger/vms/";
        for named in [
            "/run/banger/vms/ab/console.log",
            "file,id=console,path=/run/banger/vms/ab/console.log,append=on",
            "unix:/run/banger/vms/ab/qmp.sock,server=on,wait=off",
            "x,/run/banger/vms/ab",
        ] {
            assert!(names_path_in(named, dir), "{named}");
        }
        for other in [
            "/tmp/bx/run/banger/vms/ab/console.log",
            "path=/home/u/run/banger/vms/ab/qmp.sock",
            "/run/banger/vmsx/ab",
            "",
        ] {
            assert!(!names_path_in(other, dir), "{other}");
        }
        assert!(!names_path_in("/anything", ""));
    }

    #[test]
    fn processes_are_found_by_an_argument_they_carry() {
        let needle = format!("/tmp/banger-needle-{}", rand_suffix());
        // `$0` of the shell carries the needle. It waits in a builtin: a
        // lone command would be exec'd in its place (needle and all gone),
        // and any other would be forked (two processes with the needle).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read line", &needle])
            .stdin(std::process::Stdio::piped())
            .spawn();
        let Ok(child) = child.as_mut() else {
            crate::skip_test("needs sh");
            return;
        };
        // Until its exec, the child still carries the test binary's argv.
        let t0 = std::time::Instant::now();
        let mut found = with_path_arg(&needle);
        while found.is_empty() && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = with_path_arg(&needle);
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, child.id());
        assert!(with_path_arg("/tmp/banger-no-such-needle").is_empty());
        // The same path's tail is not it.
        assert!(with_path_arg(&needle["/tmp".len()..]).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn rand_suffix() -> String {
        format!(
            "{}-{}",
            own_pid(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        )
    }

    #[test]
    fn an_unused_pid_is_dead() {
        assert!(!alive(u32::MAX / 2));
        assert!(signal(u32::MAX / 2, Signal::Term).is_ok());
    }

    #[test]
    fn cpu_mhz_is_parsed() {
        assert_eq!(
            parse_cpu_mhz("processor\t: 0\ncpu MHz\t\t: 2299.998\n"),
            Some(2299.998)
        );
        assert_eq!(parse_cpu_mhz("nothing"), None);
    }
}
