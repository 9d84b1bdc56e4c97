//! dnsmasq as the DNS server for `<vm>.<suffix>` names on the bridge.
//!
//! banger runs one dnsmasq per bridge, DNS only (no DHCP: the daemon assigns
//! addresses itself), listening on the bridge address. Its names come from
//! a hosts directory with one file per VM; dnsmasq watches the directory
//! with inotify and picks up new, replaced and deleted files by itself, so
//! naming or un-naming a VM is a file write, never a signal or restart.
//!
//! 1. [`prepare_hosts_dir`] creates the directory world-readable: dnsmasq
//!    drops root for an unprivileged user after binding port 53 and rereads
//!    files as that user (the names and addresses in it are not secret).
//! 2. [`start`] spawns `dnsmasq --keep-in-foreground …` ([`DnsmasqConfig::args`])
//!    in its own process group, with stdin closed and stdout/stderr into the
//!    log file, so it survives the daemon the way VM engines do. It returns
//!    once dnsmasq has written its pid file (after binding its sockets), or
//!    with the log's last lines if it exits first.
//! 3. [`write_host_entry`] writes `<ip> <name>` to `<dir>/<name>` through a
//!    dot-file and a rename (dnsmasq ignores dot-files and sees the rename
//!    as one complete new file); `--expand-hosts --domain=<suffix>` makes
//!    the name answer as `<name>.<suffix>` too. [`remove_host_entry`]
//!    deletes the file, and the name answers NXDOMAIN again (`--local`).
//! 4. [`running`] finds the process again from the pid file, checking the
//!    pid's command line names that same pid file so a recycled pid is
//!    never taken for it; [`stop`] sends SIGTERM, then SIGKILL after a
//!    grace period.
//!
//! dnsmasq starts even when the listen address is not (yet) on any
//! interface, and answers once it appears; so check the bridge address
//! first, because nothing else reports its absence.
//!
//! `--interface` is not used: it makes dnsmasq listen on loopback as well,
//! where it would collide with a host resolver on 127.0.0.1:53.
//! `--listen-address` with `--bind-interfaces` binds the bridge address only.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{self, Signal};

/// How long [`start`] waits for the pid file.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// One dnsmasq instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqConfig {
    /// `dnsmasq` from `PATH`, or a path.
    pub program: PathBuf,
    /// The bridge address it answers on.
    pub listen: Ipv4Addr,
    pub port: u16,
    /// The domain VM names live under (`banger` → `web.banger`).
    pub suffix: String,
    pub hosts_dir: PathBuf,
    pub pid_file: PathBuf,
    /// Receives dnsmasq's stdout and stderr (its log, `--log-facility=-`).
    pub log_file: PathBuf,
    /// Where other names are forwarded (`--server`), such as `1.1.1.1` or
    /// `10.0.0.53#5353`; none means only VM names are answered.
    pub upstreams: Vec<String>,
    /// The user dnsmasq drops to after binding; `None` keeps its default.
    pub user: Option<String>,
    /// Logs every query (`--log-queries`); for debugging.
    pub log_queries: bool,
}

impl DnsmasqConfig {
    /// A configuration with banger's defaults for the given paths.
    pub fn new(listen: Ipv4Addr, run_dir: &Path, hosts_dir: &Path) -> DnsmasqConfig {
        DnsmasqConfig {
            program: PathBuf::from("dnsmasq"),
            listen,
            port: 53,
            suffix: "banger".to_string(),
            hosts_dir: hosts_dir.to_path_buf(),
            pid_file: run_dir.join("dnsmasq.pid"),
            log_file: run_dir.join("dnsmasq.log"),
            upstreams: Vec::new(),
            user: None,
            log_queries: false,
        }
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Result<Vec<String>, DnsmasqError> {
        validate_suffix(&self.suffix)?;
        for upstream in &self.upstreams {
            if upstream.is_empty() || upstream.contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(DnsmasqError::InvalidUpstream {
                    upstream: upstream.clone(),
                });
            }
        }
        let suffix = &self.suffix;
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--conf-file=/dev/null".to_string(),
            "--no-resolv".to_string(),
            "--no-hosts".to_string(),
            "--no-poll".to_string(),
            "--bind-interfaces".to_string(),
            format!("--listen-address={}", self.listen),
            format!("--port={}", self.port),
            format!("--hostsdir={}", self.hosts_dir.display()),
            "--expand-hosts".to_string(),
            format!("--domain={suffix}"),
            format!("--local=/{suffix}/"),
            "--domain-needed".to_string(),
            format!("--pid-file={}", self.pid_file.display()),
            "--log-facility=-".to_string(),
        ];
        if let Some(user) = &self.user {
            args.push(format!("--user={user}"));
        }
        if self.log_queries {
            args.push("--log-queries".to_string());
        }
        args.extend(self.upstreams.iter().map(|u| format!("--server={u}")));
        Ok(args)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsmasqError {
    #[error("dns suffix {suffix:?} {reason}")]
    InvalidSuffix {
        suffix: String,
        reason: &'static str,
    },
    #[error("dns upstream {upstream:?} is not an address (optionally with #port)")]
    InvalidUpstream { upstream: String },
    #[error("host name {name:?} {reason}")]
    InvalidHostName { name: String, reason: &'static str },
    #[error("{program} not found: install dnsmasq-base (or set its path)")]
    NotFound {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("could not start {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("dnsmasq is already running as pid {pid} with pid file {}: stop it first", pid_file.display())]
    AlreadyRunning { pid: u32, pid_file: PathBuf },
    #[error("dnsmasq exited during start-up (log {}):\n  {log_tail}", log_file.display())]
    EarlyExit { log_file: PathBuf, log_tail: String },
    #[error("dnsmasq did not write {} within {} s (log {})", pid_file.display(), timeout.as_secs(), log_file.display())]
    StartTimeout {
        pid_file: PathBuf,
        log_file: PathBuf,
        timeout: Duration,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot signal dnsmasq (pid {pid})")]
    Signal {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("dnsmasq (pid {pid}) is still running after SIGKILL")]
    StillRunning { pid: u32 },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DnsmasqError + 'a {
    move |source| DnsmasqError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A suffix is one or more DNS labels (`banger`, `vm.internal`).
pub fn validate_suffix(suffix: &str) -> Result<(), DnsmasqError> {
    let reason = if suffix.is_empty() || suffix.len() > 200 {
        Some("must be 1 to 200 characters long")
    } else if suffix
        .split('.')
        .any(|label| label_problem(label).is_some())
    {
        Some("must be dot-separated labels of lowercase letters, digits and '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DnsmasqError::InvalidSuffix {
            suffix: suffix.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A VM's host name is one DNS label, as VM names are.
pub fn validate_host_name(name: &str) -> Result<(), DnsmasqError> {
    match label_problem(name) {
        Some(reason) => Err(DnsmasqError::InvalidHostName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn label_problem(label: &str) -> Option<&'static str> {
    if label.is_empty() || label.len() > 63 {
        Some("must be 1 to 63 characters long")
    } else if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may only contain lowercase letters, digits and '-'")
    } else if label.starts_with('-') || label.ends_with('-') {
        Some("must not start or end with '-'")
    } else {
        None
    }
}

/// Creates `dir` (and its parents) and makes it readable by the user
/// dnsmasq runs as. The parents must be traversable by that user too.
pub fn prepare_hosts_dir(dir: &Path) -> Result<(), DnsmasqError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err("create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", dir))
}

/// Names `name` → `ip` (see the module doc); replaces an earlier entry.
pub fn write_host_entry(dir: &Path, name: &str, ip: Ipv4Addr) -> Result<(), DnsmasqError> {
    validate_host_name(name)?;
    let path = dir.join(name);
    // dnsmasq skips dot-files, so it never reads the half-written one.
    let temp = dir.join(format!(".{name}.tmp"));
    fs::write(&temp, format!("{ip} {name}\n")).map_err(io_err("write", &temp))?;
    fs::set_permissions(&temp, fs::Permissions::from_mode(0o644))
        .map_err(io_err("chmod", &temp))?;
    fs::rename(&temp, &path).map_err(io_err("rename into place", &path))
}

/// Un-names `name`; `Ok(false)` when it had no entry.
pub fn remove_host_entry(dir: &Path, name: &str) -> Result<bool, DnsmasqError> {
    validate_host_name(name)?;
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", &path)(e)),
    }
}

/// Starts dnsmasq detached (see the module doc) and returns its pid.
pub fn start(config: &DnsmasqConfig) -> Result<u32, DnsmasqError> {
    let args = config.args()?;
    if let Some(pid) = running(&config.pid_file) {
        return Err(DnsmasqError::AlreadyRunning {
            pid,
            pid_file: config.pid_file.clone(),
        });
    }
    prepare_hosts_dir(&config.hosts_dir)?;
    for file in [&config.pid_file, &config.log_file] {
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
    }
    match fs::remove_file(&config.pid_file) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove stale", &config.pid_file)(e)),
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.log_file)
        .map_err(io_err("open", &config.log_file))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let err_log = log.try_clone().map_err(io_err("open", &config.log_file))?;

    let program = config.program.display().to_string();
    let resolved = crate::command::which(&config.program.to_string_lossy())
        .unwrap_or_else(|| config.program.clone());
    let mut child = Command::new(&resolved)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        // Its own process group: a Ctrl-C or a kill of the daemon's group
        // does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|source| {
            // An unreadable PATH entry turns "missing" into EACCES; decide
            // by looking the program up ourselves.
            let missing = source.kind() == io::ErrorKind::NotFound
                || (!program.contains('/') && crate::command::which(&program).is_none());
            if missing {
                DnsmasqError::NotFound {
                    program: program.clone(),
                    source,
                }
            } else {
                DnsmasqError::Spawn {
                    program: program.clone(),
                    source,
                }
            }
        })?;
    let pid = child.id();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(DnsmasqError::EarlyExit {
                log_file: config.log_file.clone(),
                log_tail: log_tail(&config.log_file, log_start),
            });
        }
        if read_pid(&config.pid_file) == Some(pid) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(DnsmasqError::StartTimeout {
                pid_file: config.pid_file.clone(),
                log_file: config.log_file.clone(),
                timeout: START_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Reap it when it exits while this process lives; after a daemon
    // restart it is init's child and init reaps it.
    let reaper = std::thread::Builder::new()
        .name("dnsmasq-reaper".to_string())
        .spawn(move || child.wait());
    if let Err(e) = reaper {
        tracing::warn!(pid, error = %e, "cannot start a reaper thread for dnsmasq");
    }
    tracing::info!(pid, listen = %config.listen, "dnsmasq started");
    Ok(pid)
}

/// The pid of the dnsmasq that wrote `pid_file`, when it is still running.
pub fn running(pid_file: &Path) -> Option<u32> {
    let pid = read_pid(pid_file)?;
    let expected = format!("--pid-file={}", pid_file.display());
    let is_ours =
        process::alive(pid) && process::cmdline(pid).is_some_and(|args| args.contains(&expected));
    is_ours.then_some(pid)
}

/// Stops the dnsmasq that wrote `pid_file`: SIGTERM, then SIGKILL after
/// `grace`. `Ok(false)` when none was running. Removes the pid file.
pub fn stop(pid_file: &Path, grace: Duration) -> Result<bool, DnsmasqError> {
    let Some(pid) = running(pid_file) else {
        let _ = fs::remove_file(pid_file);
        return Ok(false);
    };
    let signal =
        |sig| process::signal(pid, sig).map_err(|source| DnsmasqError::Signal { pid, source });
    signal(Signal::Term)?;
    if !wait_gone(pid, grace) {
        signal(Signal::Kill)?;
        if !wait_gone(pid, Duration::from_secs(2)) {
            return Err(DnsmasqError::StillRunning { pid });
        }
    }
    let _ = fs::remove_file(pid_file);
    tracing::info!(pid, "dnsmasq stopped");
    Ok(true)
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process::alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn read_pid(pid_file: &Path) -> Option<u32> {
    fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// The last lines dnsmasq logged since `from`.
fn log_tail(log_file: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(log_file)
        && f.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = f.read_to_string(&mut text);
    }
    crate::command::tail_lines(text.as_bytes(), 6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DnsmasqConfig {
        DnsmasqConfig::new(
            Ipv4Addr::new(172, 31, 99, 1),
            Path::new("/run/banger"),
            Path::new("/var/lib/banger/dns"),
        )
    }

    #[test]
    fn argv_serves_dns_only_on_the_bridge_address() {
        let args = config().args().unwrap();
        for expected in [
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=172.31.99.1",
            "--port=53",
            "--hostsdir=/var/lib/banger/dns",
            "--expand-hosts",
            "--domain=banger",
            "--local=/banger/",
            "--pid-file=/run/banger/dnsmasq.pid",
            "--log-facility=-",
        ] {
            assert!(
                args.iter().any(|a| a == expected),
                "{expected} missing from {args:?}"
            );
        }
        // No DHCP, no implicit loopback listener, no config file of the host.
        assert!(!args.iter().any(|a| a.starts_with("--dhcp")), "{args:?}");
        assert!(
            !args.iter().any(|a| a.starts_with("--interface")),
            "{args:?}"
        );
        assert!(args.contains(&"--conf-file=/dev/null".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--server")));
    }

    #[test]
    fn argv_adds_upstreams_user_and_query_logging() {
        let mut c = config();
        c.upstreams = vec!["1.1.1.1".into(), "10.0.0.53#5353".into()];
        c.user = Some("nobody".into());
        c.log_queries = true;
        c.suffix = "vm.internal".into();
        let args = c.args().unwrap();
        assert!(args.contains(&"--server=1.1.1.1".to_string()));
        assert!(args.contains(&"--server=10.0.0.53#5353".to_string()));
        assert!(args.contains(&"--user=nobody".to_string()));
        assert!(args.contains(&"--log-queries".to_string()));
        assert!(args.contains(&"--local=/vm.internal/".to_string()));
    }

    #[test]
    fn argv_refuses_bad_suffixes_and_upstreams() {
        for bad in ["", "Banger", "a..b", "-x", "x.", "a b"] {
            let mut c = config();
            c.suffix = bad.into();
            assert!(
                matches!(c.args(), Err(DnsmasqError::InvalidSuffix { .. })),
                "{bad:?}"
            );
        }
        let mut c = config();
        c.upstreams = vec!["1.1.1.1 --dhcp-range=x".into()];
        assert!(matches!(
            c.args(),
            Err(DnsmasqError::InvalidUpstream { .. })
        ));
    }

    #[test]
    fn host_entries_are_one_readable_file_per_vm() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("dns");
        prepare_hosts_dir(&hosts).unwrap();
        let mode = fs::metadata(&hosts).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);

        write_host_entry(&hosts, "web", Ipv4Addr::new(172, 31, 99, 5)).unwrap();
        assert_eq!(
            fs::read_to_string(hosts.join("web")).unwrap(),
            "172.31.99.5 web\n"
        );
        let mode = fs::metadata(hosts.join("web"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);

        write_host_entry(&hosts, "web", Ipv4Addr::new(172, 31, 99, 6)).unwrap();
        assert_eq!(
            fs::read_to_string(hosts.join("web")).unwrap(),
            "172.31.99.6 web\n"
        );
        let names: Vec<_> = fs::read_dir(&hosts)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["web"], "no temporary files left behind");

        assert!(remove_host_entry(&hosts, "web").unwrap());
        assert!(!remove_host_entry(&hosts, "web").unwrap());
    }

    #[test]
    fn host_names_that_could_escape_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../etc", ".hidden", "Web", "a/b", "", "web-"] {
            assert!(
                matches!(
                    write_host_entry(dir.path(), bad, Ipv4Addr::LOCALHOST),
                    Err(DnsmasqError::InvalidHostName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_pid_file_naming_another_process_is_not_running_dnsmasq() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("dnsmasq.pid");
        assert_eq!(running(&pid_file), None);
        // Our own pid is alive but its command line names no such pid file.
        fs::write(&pid_file, format!("{}\n", process::own_pid())).unwrap();
        assert_eq!(running(&pid_file), None);
        assert!(!stop(&pid_file, Duration::from_millis(10)).unwrap());
        assert!(!pid_file.exists(), "a stale pid file is cleared");
    }

    #[test]
    fn a_missing_program_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = DnsmasqConfig::new(Ipv4Addr::LOCALHOST, dir.path(), &dir.path().join("dns"));
        c.program = PathBuf::from("banger-no-such-dnsmasq");
        let err = start(&c).unwrap_err();
        assert_eq!(
            err.to_string(),
            "banger-no-such-dnsmasq not found: install dnsmasq-base (or set its path)"
        );
    }
}
