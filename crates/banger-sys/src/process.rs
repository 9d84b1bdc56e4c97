//! Process inspection and signalling through `/proc` and `kill(2)`: is a pid
//! alive (zombies count as dead: they hold no resources), what is its command
//! line, send it a signal. Spawning lives with its callers' traits
//! ([`crate::command`]) or in tokio; this module never forks.

use std::path::Path;

pub use rustix::process::Signal;

/// True when `pid` names a live process (not a zombie). A process counts
/// as live while any of its threads runs: after SIGKILL the leader can show
/// as a zombie while other threads still hold its files and sockets.
pub fn alive(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return stat_is_live(&format!("/proc/{pid}/stat"));
    };
    tasks.flatten().any(|task| {
        let stat = task.path().join("stat");
        stat_is_live(&stat.to_string_lossy())
    })
}

/// Whether a `/proc/.../stat` file shows a state other than zombie or dead.
fn stat_is_live(path: &str) -> bool {
    match std::fs::read_to_string(path) {
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
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
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
/// for a VM's engine.
pub fn alive_with_arg(pid: u32, needle: &str) -> bool {
    alive(pid) && cmdline(pid).is_some_and(|args| args.iter().any(|a| a.contains(needle)))
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
    fn own_process_is_alive_and_has_a_cmdline() {
        assert!(alive(own_pid()));
        assert!(cmdline(own_pid()).unwrap()[0].contains("banger_sys"));
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
