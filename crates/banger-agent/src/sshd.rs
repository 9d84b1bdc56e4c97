//! sshd, when the image has one (`debian` does, `minimal` does not). Owns
//! its host keys, its runtime directory, the setting that lets root log in
//! with a key, and keeping it running; the keys root logs in with are
//! `setup.rs`'s (`/root/.ssh/authorized_keys`).
//!
//! 1. Nothing happens unless `/usr/sbin/sshd` exists.
//! 2. Host keys: images ship without them so every VM has its own, so when
//!    the Ed25519 host key is missing (a VM's first boot: it goes on the
//!    VM's own root overlay), take the one the host made for it
//!    ([`Sshd::given`], from the config drive), or else make one with
//!    `ssh-keygen`, at `SCHED_IDLE`, started from a thread of that policy
//!    ([`start_when_idle`]) so the start itself waits too: under TCG
//!    `ssh-keygen` takes ~0.6 s of the guest's one CPU, and its first exec
//!    ~20 ms, which the handshake and the host's first commands need more.
//! 3. `/run/sshd`, the privilege-separation directory, mode 0755 (`/run`
//!    is a fresh tmpfs every boot).
//! 4. Root logs in with keys: unless the global section of
//!    `/etc/ssh/sshd_config` has a first `PermitRootLogin` that allows it,
//!    write [`DROP_IN`] (`PermitRootLogin prohibit-password`,
//!    `PasswordAuthentication no`). sshd keeps the first value it reads, so
//!    that works only if the config includes `sshd_config.d` before its own
//!    line (Debian's includes it first); otherwise the same two settings go
//!    on sshd's command line as well.
//! 5. Run `sshd -D -e` (in the foreground, logging to the console), reaped
//!    by the agent's reaper. When it exits, log it and start it again after
//!    a back-off that doubles from [`Backoff::min`] to [`Backoff::max`] and
//!    starts over after a run of [`Backoff::stable`]; never once shutdown
//!    has begun.
//!
//! It runs as a task beside the agent port, started once the host's first
//! command has run (`background.rs`): generating a host key takes ~0.6 s
//! under TCG and must not delay the host.
//!
//! A restored or forked guest would serve the snapshot's host key, shared
//! with every other VM made from it: [`Sshd::install_host_key`] writes the
//! one the host made beside it and renames it over the old (the public half
//! first). An sshd before OpenSSH 9.8 re-executes itself for every
//! connection and that child reads the host keys from disk, so the next
//! connection gets the new key with nothing more (checked on Debian 12's
//! 9.2). From 9.8 the listener reads the keys once and hands them to
//! `sshd-session`: when an `sshd-session` is installed, the running sshd
//! is sent `SIGHUP`, on which it re-executes itself and reads the new key.
//! Skipping that matters after a restore: sshd's restart costs the guest's
//! one CPU ~50 ms under TCG, just when the host's first command runs.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use banger_proto::{ExitStatus, SshHostKey};
use tokio::sync::oneshot;

use crate::console::{Millis, chain, log};
use crate::reaper::Reaper;

/// The drop-in written when `sshd_config` does not let root log in.
pub const DROP_IN: &str = "etc/ssh/sshd_config.d/banger.conf";
const DROP_IN_TEXT: &str = "# Written by banger-agent: root logs in with a key only.\n\
                            PermitRootLogin prohibit-password\n\
                            PasswordAuthentication no\n";
/// The drop-in's settings as sshd options, for a config that would not read it in time.
const OPTIONS: [&str; 4] = [
    "-o",
    "PermitRootLogin=prohibit-password",
    "-o",
    "PasswordAuthentication=no",
];
/// The one host key type made per VM: an RSA key takes ~20 s to generate
/// under TCG, an Ed25519 key a few milliseconds, and every current client
/// speaks Ed25519. sshd is pointed at it with `-h`, so it does not look for
/// the other default types.
const HOST_KEY_TYPES: [&str; 1] = ["ed25519"];
/// The host key sshd serves (guest path).
pub const HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
/// Where a renewed host key is made before it replaces [`HOST_KEY`].
const NEW_HOST_KEY: &str = "/etc/ssh/.ssh_host_ed25519_key.banger-new";
/// Where a first boot's host key is made before it becomes [`HOST_KEY`].
const FIRST_HOST_KEY: &str = "/etc/ssh/.ssh_host_ed25519_key.banger-first";

/// The pid of the sshd the supervisor runs now (0: none); the guest has
/// one supervisor.
static RUNNING: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum SshdError {
    #[error("cannot run {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} failed with exit code {code}")]
    Failed { path: PathBuf, code: i32 },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How long to wait before restarting sshd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait, and the wait after a run of at least `stable`.
    pub min: Duration,
    /// The longest wait.
    pub max: Duration,
    /// A run this long counts as healthy.
    pub stable: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The wait after a run of `ran`, the previous wait having been `previous`.
    pub fn next(&self, previous: Option<Duration>, ran: Duration) -> Duration {
        match previous {
            Some(previous) if ran < self.stable => (previous * 2).clamp(self.min, self.max),
            _ => self.min,
        }
    }
}

/// What `sshd_config` says about root logging in with a key (step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootLogin {
    /// Its first `PermitRootLogin` allows it.
    Allowed,
    /// It does not say so, and it includes `sshd_config.d` first: a drop-in decides.
    DropIn,
    /// It does not say so, and a drop-in would come too late or never be read.
    Options,
}

/// Reads the global section (up to the first `Match`) of an `sshd_config`.
pub fn root_login(sshd_config: &str) -> RootLogin {
    let mut includes_drop_ins = false;
    for line in sshd_config.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let mut words = line
            .split(|c: char| c.is_whitespace() || c == '=')
            .filter(|w| !w.is_empty());
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword.to_ascii_lowercase().as_str() {
            "match" => break,
            "include" => includes_drop_ins |= words.any(|w| w.contains("sshd_config.d")),
            "permitrootlogin" => {
                let value = words.next().unwrap_or_default().to_ascii_lowercase();
                let allows = matches!(
                    value.as_str(),
                    "yes" | "prohibit-password" | "without-password"
                );
                return match (allows, includes_drop_ins) {
                    (true, _) => RootLogin::Allowed,
                    (false, true) => RootLogin::DropIn,
                    (false, false) => RootLogin::Options,
                };
            }
            _ => {}
        }
    }
    if includes_drop_ins {
        RootLogin::DropIn
    } else {
        RootLogin::Options
    }
}

/// Step 4 under `root`: writes the drop-in when needed and returns the
/// options sshd needs on its command line.
pub fn permit_root_login(root: &Path) -> Result<Vec<String>, SshdError> {
    let config = std::fs::read_to_string(root.join("etc/ssh/sshd_config")).unwrap_or_default();
    let verdict = root_login(&config);
    if verdict == RootLogin::Allowed {
        return Ok(Vec::new());
    }
    let path = root.join(DROP_IN);
    let write = || -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path.parent().expect("DROP_IN has a directory"))?;
        std::fs::write(&path, DROP_IN_TEXT)
    };
    write().map_err(|source| SshdError::Write {
        path: path.clone(),
        source,
    })?;
    log(format_args!("sshd: wrote /{DROP_IN}"));
    Ok(match verdict {
        RootLogin::Options => OPTIONS.iter().map(|s| s.to_string()).collect(),
        _ => Vec::new(),
    })
}

/// Whether any default host key is missing under `root`.
pub fn missing_host_keys(root: &Path) -> bool {
    HOST_KEY_TYPES
        .iter()
        .any(|t| !root.join(format!("etc/ssh/ssh_host_{t}_key")).is_file())
}

/// Where distributions install OpenSSH 9.8's `sshd-session`.
pub const SSHD_SESSION: [&str; 4] = [
    "usr/lib/openssh/sshd-session",
    "usr/libexec/openssh/sshd-session",
    "usr/lib/ssh/sshd-session",
    "usr/libexec/sshd-session",
];

/// Whether the sshd under `root` reads its host keys once, at start (an
/// `sshd-session` is installed: OpenSSH 9.8 or later), rather than for
/// every connection: only then must it be restarted to serve a new key.
pub fn keys_read_once(root: &Path) -> bool {
    SSHD_SESSION.iter().any(|p| root.join(p).exists())
}

/// `key` at `path` (owner-only) and its public line at `path.pub`, both
/// made afresh.
fn write_key_pair(path: &Path, key: &SshHostKey) -> Result<(), SshdError> {
    let write = |path: &Path, text: &str, mode: u32| {
        let _ = std::fs::remove_file(path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(|source| SshdError::Write {
                path: path.to_path_buf(),
                source,
            })
    };
    write(path, &key.private, 0o600)?;
    let public = PathBuf::from(format!("{}.pub", path.display()));
    write(&public, &format!("{}\n", key.public.trim()), 0o644)
}

/// Step 3 under `root`.
pub fn make_run_dir(root: &Path) -> Result<(), SshdError> {
    let path = root.join("run/sshd");
    let make = || -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
    };
    make().map_err(|source| SshdError::Write {
        path: path.clone(),
        source,
    })
}

/// sshd and where its files are.
#[derive(Debug, Clone)]
pub struct Sshd {
    /// The root its files are under: `/` in the guest.
    pub root: PathBuf,
    /// The sshd binary.
    pub program: PathBuf,
    /// `ssh-keygen`.
    pub keygen: PathBuf,
    pub backoff: Backoff,
    /// The host key the host made for this guest's first boot (its config
    /// drive's), used instead of `ssh-keygen` when the guest has none.
    pub given: Option<SshHostKey>,
}

impl Sshd {
    /// The guest's own sshd.
    pub fn guest() -> Self {
        Sshd {
            root: "/".into(),
            program: "/usr/sbin/sshd".into(),
            keygen: "/usr/bin/ssh-keygen".into(),
            backoff: Backoff::default(),
            given: None,
        }
    }

    /// Steps 1-5: returns at once when there is no sshd, otherwise only
    /// once shutdown has begun.
    pub async fn run(&self, reaper: &'static Reaper) {
        if !self.program.is_file() {
            log(format_args!(
                "sshd: no {} in this image",
                self.program.display()
            ));
            return;
        }
        let args = self.prepare(reaper).await;
        self.supervise(reaper, &args).await
    }

    /// Steps 2-4, logging what fails; returns sshd's extra arguments.
    pub async fn prepare(&self, reaper: &'static Reaper) -> Vec<String> {
        if missing_host_keys(&self.root) {
            let start = Instant::now();
            match self.generate_host_keys(reaper).await {
                Ok(made_by) => log(format_args!(
                    "sshd: host key made by {made_by} ({})",
                    Millis::since(start)
                )),
                Err(e) => log(format_args!(
                    "sshd: generating host keys failed: {}",
                    chain(&e)
                )),
            }
        }
        if let Err(e) = make_run_dir(&self.root) {
            log(format_args!("sshd: {}", chain(&e)));
        }
        let mut args = vec!["-h".to_string(), HOST_KEY.to_string()];
        args.extend(permit_root_login(&self.root).unwrap_or_else(|e| {
            log(format_args!("sshd: {}", chain(&e)));
            OPTIONS.iter().map(|s| s.to_string()).collect()
        }));
        args
    }

    /// Step 2: make the Ed25519 host key, beside [`HOST_KEY`], and link it
    /// there only if nothing is there by then: a guest snapshotted while
    /// making it (a warm image's) and restored has been given a key of its
    /// own by the host meanwhile ([`Sshd::install_host_key`]), which must
    /// stay, as the host pinned it. Returns who made it: the host
    /// ([`Sshd::given`]) or `ssh-keygen`.
    pub async fn generate_host_keys(
        &self,
        reaper: &'static Reaper,
    ) -> Result<&'static str, SshdError> {
        let at = |p: &str| self.root.join(p.trim_start_matches('/'));
        let pub_of = |p: &Path| PathBuf::from(format!("{}.pub", p.display()));
        let (made, dest) = (at(FIRST_HOST_KEY), at(HOST_KEY));
        for stale in [&made, &pub_of(&made)] {
            let _ = std::fs::remove_file(stale);
        }
        let made_by = match &self.given {
            Some(key) if key.is_ed25519_pair() => {
                self.make_etc_ssh()?;
                write_key_pair(&made, key)?;
                "the host"
            }
            given => {
                if given.is_some() {
                    log(format_args!(
                        "sshd: the host's host key is not an Ed25519 key pair; making one"
                    ));
                }
                self.keygen_at(reaper, FIRST_HOST_KEY).await?;
                "ssh-keygen"
            }
        };
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SshdError::Write { path, source }
        };
        let adopted = match std::fs::hard_link(&made, &dest) {
            Ok(()) => std::fs::rename(pub_of(&made), pub_of(&dest))
                .map(|()| true)
                .map_err(write_err(&pub_of(&dest))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(write_err(&dest)(e)),
        };
        for done in [&made, &pub_of(&made)] {
            let _ = std::fs::remove_file(done);
        }
        if !adopted? {
            log(format_args!(
                "sshd: kept the host key the host gave this guest meanwhile"
            ));
        }
        Ok(made_by)
    }

    /// `key` in place of the host key there is, and a running sshd told to
    /// use it; `Ok(false)` when the image has no sshd.
    pub fn install_host_key(&self, key: &SshHostKey) -> Result<bool, SshdError> {
        if !self.program.is_file() {
            return Ok(false);
        }
        let at = |p: &str| self.root.join(p.trim_start_matches('/'));
        let (new, dest) = (at(NEW_HOST_KEY), at(HOST_KEY));
        let pub_of = |p: &Path| PathBuf::from(format!("{}.pub", p.display()));
        write_key_pair(&new, key)?;
        for (from, to) in [(pub_of(&new), pub_of(&dest)), (new, dest)] {
            std::fs::rename(&from, &to).map_err(|source| SshdError::Write { path: to, source })?;
        }
        let pid = RUNNING.load(Ordering::SeqCst);
        if pid != 0
            && keys_read_once(&self.root)
            && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::Hup);
        }
        Ok(true)
    }

    /// `etc/ssh` under the root, where host keys go.
    fn make_etc_ssh(&self) -> Result<(), SshdError> {
        let etc_ssh = self.root.join("etc/ssh");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&etc_ssh)
            .map_err(|source| SshdError::Write {
                path: etc_ssh,
                source,
            })
    }

    /// Runs `ssh-keygen` for an Ed25519 key at `path` (guest path).
    async fn keygen_at(&self, reaper: &'static Reaper, path: &str) -> Result<(), SshdError> {
        self.make_etc_ssh()?;
        let mut cmd = command(&self.keygen);
        let key = self.root.join(path.trim_start_matches('/'));
        cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
            .arg(&key)
            .stdout(Stdio::null());
        // A first boot's key is made while the host runs its first commands
        // (the user's, the git identity's) on the guest's only CPU: it waits
        // for them.
        let (_, exited) =
            start_when_idle(reaper, cmd)
                .await
                .map_err(|source| SshdError::Spawn {
                    path: self.keygen.clone(),
                    source,
                })?;
        match exited.await.map(|s| s.code) {
            Ok(0) => Ok(()),
            Ok(code) => Err(SshdError::Failed {
                path: self.keygen.clone(),
                code,
            }),
            Err(_) => Err(SshdError::Failed {
                path: self.keygen.clone(),
                code: 255,
            }),
        }
    }

    /// Step 5 with `args` after `-D -e`.
    pub async fn supervise(&self, reaper: &Reaper, args: &[String]) {
        let mut wait = None;
        while !crate::shutdown::shutting_down() {
            let started = Instant::now();
            let mut cmd = command(&self.program);
            cmd.args(["-D", "-e"]).args(args);
            let outcome = match start(reaper, &mut cmd) {
                Ok((pid, exited)) => {
                    log(format_args!("sshd: started (pid {pid})"));
                    RUNNING.store(pid, Ordering::SeqCst);
                    let outcome = match exited.await {
                        Ok(status) => describe(status),
                        Err(_) => "was lost".to_string(),
                    };
                    RUNNING.store(0, Ordering::SeqCst);
                    outcome
                }
                Err(e) => format!("could not start: {e}"),
            };
            if crate::shutdown::shutting_down() {
                return;
            }
            let ran = started.elapsed();
            let next = self.backoff.next(wait, ran);
            wait = Some(next);
            log(format_args!(
                "sshd: {outcome} after {}; restarting in {next:?}",
                Millis(ran)
            ));
            tokio::time::sleep(next).await;
        }
    }
}

/// A child with a clean environment, in its own process group, its output
/// on the agent's (the console).
fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", crate::spawn::DEFAULT_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .process_group(0);
    cmd
}

/// Spawns `cmd` through the reaper; returns its pid and its exit.
/// [`start`] on a new thread at `SCHED_IDLE`, which the child inherits: the
/// spawn (a fork and an exec, ~20 ms the first time under TCG) and the
/// whole run wait for the guest's CPU to have nothing else to do.
async fn start_when_idle(
    reaper: &'static Reaper,
    mut cmd: Command,
) -> io::Result<(u32, oneshot::Receiver<ExitStatus>)> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("idle-spawn".into())
        .spawn(move || {
            if let Err(e) = banger_sys::process::run_only_when_idle() {
                log(format_args!("spawning at normal priority: {e}"));
            }
            let _ = tx.send(start(reaper, &mut cmd));
        })?;
    rx.await
        .unwrap_or_else(|_| Err(io::Error::other("the spawning thread died")))
}

fn start(reaper: &Reaper, cmd: &mut Command) -> io::Result<(u32, oneshot::Receiver<ExitStatus>)> {
    let (_, pid, exited) = reaper.spawn(|| {
        let child = cmd.spawn()?;
        Ok(((), child.id()))
    })?;
    Ok((pid, exited))
}

fn describe(status: ExitStatus) -> String {
    match status.signal {
        Some(sig) => format!("was killed by signal {sig}"),
        None => format!("exited with code {}", status.code),
    }
}

#[cfg(test)]
#[path = "sshd_tests.rs"]
mod tests;
