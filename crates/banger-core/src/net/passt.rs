//! passt, user mode's network when it is installed: one unprivileged
//! process per VM that QEMU reaches over a unix stream socket. It replaces
//! QEMU's slirp because slirp always maps its gateway address to the host's
//! loopback, so a guest reached every service listening on 127.0.0.1;
//! passt's `--no-map-gw` turns that off.
//!
//! 1. [`argv`]: the guest keeps the addresses banger's agent gives it
//!    statically ([`super::user`]); passt forwards DNS sent to
//!    [`super::user::DNS`] to the host's resolver, publishes each port on
//!    127.0.0.1 only, maps the gateway to the host's loopback only for
//!    `--host-access`, and exits when its one client (QEMU) goes away.
//! 2. [`start`]: spawned in its own process group (it outlives a killed
//!    daemon, as QEMU does), it is ready once its socket exists; its pid is
//!    also written to [`PID_FILE`] beside the socket, for the start-up sweep.
//! 3. [`stop`]: a pid read back from a scratch file is signalled only when
//!    that process still names this VM's socket ([`is_ours`]).
//!
//! Which backend a VM gets, and when, is the user-net capability's.

use banger_api::PortForward;
use banger_sys::command::{Cmd, CommandError};
use banger_sys::process::Signal;
use banger_sys::spawn::{SpawnOptions, Spawner, Stdio};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The socket QEMU connects to, in the VM's runtime dir.
pub const SOCKET: &str = "net.sock";
/// passt's pid, beside its socket.
pub const PID_FILE: &str = "passt.pid";
/// passt's log, in the VM's state dir (passt truncates it each boot).
pub const LOG: &str = "passt.log";
/// How long passt gets to bind its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    #[error("cannot start passt")]
    Spawn(#[source] CommandError),
    #[error("passt exited during start-up: {log}")]
    Exited { log: String },
    #[error("passt did not create {path} within {secs} s: {log}")]
    Timeout {
        path: PathBuf,
        secs: u64,
        log: String,
    },
    #[error("cannot write {path}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One VM's passt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options<'a> {
    pub socket: &'a Path,
    pub log: &'a Path,
    pub forwards: &'a [PortForward],
    /// Map the gateway address to the host's loopback (`--host-access`).
    pub host_loopback: bool,
    /// The daemon's uid when it is root: passt started as root drops to
    /// `nobody` before binding its socket, which `nobody` cannot do in the
    /// daemon's owner-only runtime dir.
    pub runas: Option<u32>,
}

/// passt's arguments (without the program) for `o`.
pub fn argv(o: &Options<'_>) -> Vec<String> {
    let mut a: Vec<String> = ["--foreground", "--one-off", "--ipv4-only"]
        .map(String::from)
        .into();
    if let Some(uid) = o.runas {
        a.extend(["--runas".into(), uid.to_string()]);
    }
    let address = super::user::ADDRESS;
    let (ip, prefix) = address.split_once('/').expect("a cidr");
    for (flag, value) in [
        ("--socket", o.socket.to_string_lossy().into_owned()),
        ("--log-file", o.log.to_string_lossy().into_owned()),
        ("--address", ip.into()),
        ("--netmask", prefix.into()),
        ("--gateway", super::user::GATEWAY.into()),
        ("--dns-forward", super::user::DNS.into()),
    ] {
        a.extend([flag.to_string(), value]);
    }
    if !o.host_loopback {
        a.push("--no-map-gw".into());
    }
    for f in o.forwards {
        a.extend([
            "--tcp-ports".into(),
            format!("127.0.0.1/{}:{}", f.host, f.guest),
        ]);
    }
    a
}

/// Starts passt as `program` and returns its pid once its socket exists.
pub async fn start(
    spawner: &dyn Spawner,
    program: &Path,
    o: &Options<'_>,
) -> Result<u32, PasstError> {
    let _ = std::fs::remove_file(o.socket);
    let cmd = Cmd::new(program.to_string_lossy()).args(argv(o));
    // Its own log file (`--log-file`) has everything; on stderr it repeats
    // it between complaints that there is no syslog.
    let opts = SpawnOptions {
        stdin: Stdio::Null,
        stdout: Stdio::Null,
        stderr: Stdio::Null,
        own_process_group: true,
        kill_on_drop: false,
    };
    let mut child = spawner.spawn(&cmd, &opts).map_err(PasstError::Spawn)?;
    let pid = child.pid();
    let log = || crate::layout::tail(o.log, 6);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if child.try_wait().ok().flatten().is_some() {
            return Err(PasstError::Exited { log: log() });
        }
        if o.socket.exists() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(PasstError::Timeout {
                path: o.socket.to_owned(),
                secs: START_TIMEOUT.as_secs(),
                log: log(),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::spawn(async move {
        let status = child.wait().await;
        tracing::debug!(pid, ?status, "passt exited");
    });
    let pid_file = pid_file(o.socket);
    if let Err(source) = std::fs::write(&pid_file, format!("{pid}\n")) {
        stop(pid, o.socket);
        return Err(PasstError::PidFile {
            path: pid_file,
            source,
        });
    }
    Ok(pid)
}

fn pid_file(socket: &Path) -> PathBuf {
    socket.with_file_name(PID_FILE)
}

/// The pid [`start`] wrote beside `socket`, if any.
pub fn read_pid(socket: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file(socket))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is alive and a passt serving `socket`: its program is
/// passt and its arguments carry exactly `--socket <socket>` (a pid from a
/// scratch file may have been reused by anything since).
pub fn is_ours(pid: u32, socket: &Path) -> bool {
    if pid == 0 || !banger_sys::process::alive(pid) {
        return false;
    }
    let Some(args) = banger_sys::process::cmdline(pid) else {
        return false;
    };
    let socket = socket.to_string_lossy();
    let is_passt = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n.to_string_lossy().starts_with("passt"));
    is_passt
        && args
            .windows(2)
            .any(|w| w[0] == "--socket" && w[1] == socket)
}

/// Stops the passt `pid` serving `socket` (only if [`is_ours`]) and removes
/// its socket and pid file. Idempotent.
pub fn stop(pid: u32, socket: &Path) {
    if is_ours(pid, socket) {
        let _ = banger_sys::process::signal(pid, Signal::Term);
        let deadline = Instant::now() + Duration::from_secs(2);
        while banger_sys::process::alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if is_ours(pid, socket) {
            let _ = banger_sys::process::signal(pid, Signal::Kill);
        }
    }
    let _ = std::fs::remove_file(socket);
    let _ = std::fs::remove_file(pid_file(socket));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options<'a>(forwards: &'a [PortForward], host_loopback: bool) -> Options<'a> {
        Options {
            socket: Path::new("/run/b/vms/abc/net.sock"),
            log: Path::new("/state/vms/abc/passt.log"),
            forwards,
            host_loopback,
            runas: None,
        }
    }

    fn has_pair(a: &[String], flag: &str, value: &str) -> bool {
        a.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn a_guest_gets_the_fixed_addresses_and_no_host_loopback() {
        let a = argv(&options(&[], false));
        assert_eq!(a[..3], ["--foreground", "--one-off", "--ipv4-only"]);
        assert!(has_pair(&a, "--socket", "/run/b/vms/abc/net.sock"));
        assert!(has_pair(&a, "--log-file", "/state/vms/abc/passt.log"));
        assert!(has_pair(&a, "--address", "10.0.2.15"));
        assert!(has_pair(&a, "--netmask", "24"));
        assert!(has_pair(&a, "--gateway", "10.0.2.2"));
        assert!(has_pair(&a, "--dns-forward", "10.0.2.3"));
        assert!(a.contains(&"--no-map-gw".to_string()));
        assert!(!a.contains(&"--tcp-ports".to_string()));
        assert!(!a.contains(&"--runas".to_string()));
    }

    #[test]
    fn host_access_maps_the_gateway_to_the_host() {
        let a = argv(&options(&[], true));
        assert!(!a.contains(&"--no-map-gw".to_string()));
    }

    #[test]
    fn forwards_are_bound_on_loopback_only() {
        let forwards = [
            PortForward {
                host: 2222,
                guest: 22,
            },
            PortForward {
                host: 8080,
                guest: 80,
            },
        ];
        let a = argv(&options(&forwards, false));
        assert!(has_pair(&a, "--tcp-ports", "127.0.0.1/2222:22"));
        assert!(has_pair(&a, "--tcp-ports", "127.0.0.1/8080:80"));
        let mut root = options(&forwards, false);
        root.runas = Some(0);
        assert!(has_pair(&argv(&root), "--runas", "0"));
    }

    /// A stand-in running until dropped, once it has exec'd.
    struct Running(std::process::Child);

    impl Running {
        fn start(cmd: &mut std::process::Command, argv0: &str) -> Running {
            let child = cmd.spawn().unwrap();
            let pid = child.id();
            let t0 = Instant::now();
            while banger_sys::process::cmdline(pid).is_none_or(|a| a[0] != argv0)
                && t0.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Running(child)
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `sh` named `passt` whose arguments say `--socket <socket>`.
    fn fake_passt(socket: &Path) -> Running {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sh");
        cmd.arg0("passt")
            .args(["-c", "sleep 100; :", "passt", "--socket"])
            .arg(socket);
        Running::start(&mut cmd, "passt")
    }

    #[test]
    fn only_a_passt_naming_the_socket_is_ours() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("net.sock");
        let other = Running::start(std::process::Command::new("sleep").arg("100"), "sleep");
        assert!(!is_ours(other.0.id(), &socket));
        let mut child = fake_passt(&socket);
        let pid = child.0.id();
        assert!(is_ours(pid, &socket));
        assert!(
            !is_ours(pid, &dir.path().join("net")),
            "a prefix is not the socket"
        );
        assert!(!is_ours(pid, &dir.path().join("other.sock")));
        assert!(!is_ours(0, &socket));
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        assert!(!is_ours(pid, &socket), "a reaped process is not");
    }
}
