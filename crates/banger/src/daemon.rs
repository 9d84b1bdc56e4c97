//! Finding the daemon and starting it when it is not running. Every command
//! but `daemon status`/`daemon stop` goes through [`connect`]:
//!
//! 0. Trust nothing in the runtime directory until it is proven ours: made
//!    mode 0700 if missing, refused if it is a symlink or another user's
//!    (one who made `/tmp/banger-<uid>` first could serve a fake daemon
//!    there), and the socket must be ours too. Nothing is sent before.
//! 1. `GET /v1/daemon` on the socket; an answer means it runs.
//! 2. If nothing listens (socket missing or refusing), spawn `bangerd`
//!    detached in its own process group, stdin from `/dev/null`, stdout and
//!    stderr appended to the daemon log, with our environment (so it
//!    resolves the same paths).
//! 3. Poll `GET /v1/daemon` every 20 ms for up to 15 s. If it never answers,
//!    or the process exits with a failure first, fail naming the log and
//!    quoting its last lines.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use banger_api::DaemonStatus;
use banger_api::paths::Paths;
use banger_sys::command::{Cmd, CommandError};
use banger_sys::private_dir::{check_own_socket, ensure_private_dir, ensure_private_file};
use banger_sys::spawn::{Child, SpawnOptions, Spawner};

use crate::client::{Client, ClientError};

const POLL_EVERY: Duration = Duration::from_millis(20);
const START_TIMEOUT: Duration = Duration::from_secs(15);
const LOG_TAIL_LINES: usize = 15;

/// How long a daemon may take to answer `GET /v1/daemon` before it counts
/// as stuck (it answers from memory, in about a millisecond).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// `BANGER_SOCKET`: another user's daemon to use (a root daemon whose
/// `api_group` we are in). Never started from here; trusted only when the
/// socket and its directory belong to root or to us and the directory is
/// not writable by others.
fn shared_socket() -> anyhow::Result<Option<PathBuf>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Some(sock) = std::env::var_os("BANGER_SOCKET").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let sock = PathBuf::from(sock);
    let me = banger_sys::process::euid();
    let trusted = |uid: u32| uid == 0 || uid == me;
    let meta = std::fs::symlink_metadata(&sock)
        .with_context(|| format!("BANGER_SOCKET {}", sock.display()))?;
    let dir = sock.parent().unwrap_or(Path::new("/"));
    let dir_meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("BANGER_SOCKET's directory {}", dir.display()))?;
    if !meta.file_type().is_socket() || !trusted(meta.uid()) {
        bail!(
            "BANGER_SOCKET {} is not a socket of root's or yours (owner uid {}): refusing it",
            sock.display(),
            meta.uid()
        );
    }
    if !dir_meta.is_dir() || !trusted(dir_meta.uid()) || dir_meta.mode() & 0o002 != 0 {
        bail!(
            "BANGER_SOCKET's directory {} must be root's or yours and not writable by others: refusing it",
            dir.display()
        );
    }
    Ok(Some(sock))
}

/// A client on a daemon that answers, started if need be.
pub async fn connect(paths: &Paths, spawner: &dyn Spawner) -> anyhow::Result<Client> {
    if let Some(sock) = shared_socket()? {
        let client = Client::new(&sock);
        return match status_within(paths, &client, PROBE_TIMEOUT).await? {
            Some(_) => Ok(client),
            None => bail!(
                "no daemon answers on BANGER_SOCKET {}: ask its owner to start it",
                sock.display()
            ),
        };
    }
    let client = Client::new(paths.socket());
    if status(paths, &client).await?.is_some() {
        return Ok(client);
    }
    let [state, ..] = paths.private_dirs();
    ensure_private_dir(state.path).context(state.refusal())?;
    let log = paths.daemon_log();
    // Only this start's lines are shown if it fails, not an earlier one's.
    let from = std::fs::metadata(&log).map_or(0, |m| m.len());
    let mut child = spawn(spawner, &daemon_binary(), &log)?;
    wait_until_up(&client, &mut child, &log, from).await?;
    Ok(client)
}

/// `$BANGER_DAEMON_BIN`, else `bangerd` beside this executable, else
/// `bangerd` from `PATH`.
pub fn daemon_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("BANGER_DAEMON_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("bangerd")));
    match sibling {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from("bangerd"),
    }
}

/// Step 0 of the module doc: refuses a runtime directory or socket that
/// another user could have made.
fn check_runtime(paths: &Paths) -> anyhow::Result<()> {
    let [_, runtime, _] = paths.private_dirs();
    ensure_private_dir(runtime.path).context(runtime.refusal())?;
    check_own_socket(&paths.socket()).context(runtime.refusal())?;
    Ok(())
}

fn spawn(spawner: &dyn Spawner, bin: &Path, log: &Path) -> anyhow::Result<Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // The daemon's umask comes too late for its log, which we open for it.
    ensure_private_file(log)?;
    let cmd = Cmd::new(bin.to_string_lossy());
    spawner
        .spawn(&cmd, &SpawnOptions::detached(log))
        .map_err(|e| match e {
            CommandError::NotFound { .. } => not_found(bin),
            CommandError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                not_found(bin)
            }
            CommandError::OutputFile { source, .. } => anyhow::Error::new(source)
                .context(format!("cannot open the daemon log {}", log.display())),
            CommandError::Spawn { source, .. } => anyhow::Error::new(source)
                .context(format!("cannot start the daemon {}", bin.display())),
            other => anyhow::Error::new(other)
                .context(format!("cannot start the daemon {}", bin.display())),
        })
}

fn not_found(bin: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot start the daemon: {} not found; install bangerd next to banger or set BANGER_DAEMON_BIN",
        bin.display()
    )
}

/// Waits for the daemon just started to answer; its failure quotes what it
/// logged, from byte `from` of `log`.
async fn wait_until_up(
    client: &Client,
    child: &mut Child,
    log: &Path,
    from: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match client.get::<DaemonStatus>("/v1/daemon").await {
            Ok(_) => return Ok(()),
            Err(err) if err.is_not_running() => {}
            Err(err) => return Err(err.into()),
        }
        // A daemon that forks itself exits 0; only a failure is final.
        if let Ok(Some(status)) = child.try_wait()
            && !status.success()
        {
            bail!(
                "the daemon exited ({status}) before it answered; see {}{}",
                log.display(),
                log_tail(log, from)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the daemon did not answer on {} within {} s; see {}{}",
                client.socket().display(),
                START_TIMEOUT.as_secs(),
                log.display(),
                log_tail(log, from)
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The log's last lines from byte `from` on, indented, after a newline
/// (or nothing).
fn log_tail(log: &Path, from: u64) -> String {
    let Ok(bytes) = std::fs::read(log) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default());
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    tail.iter().map(|l| format!("\n  {l}")).collect()
}

/// Whether a daemon answers, without starting one; a daemon that takes
/// the connection and says nothing for [`PROBE_TIMEOUT`] is an error, and
/// so is a runtime directory that is not ours (step 0).
pub async fn status(paths: &Paths, client: &Client) -> anyhow::Result<Option<DaemonStatus>> {
    check_runtime(paths)?;
    Ok(status_within(paths, client, PROBE_TIMEOUT).await?)
}

async fn status_within(
    paths: &Paths,
    client: &Client,
    timeout: Duration,
) -> Result<Option<DaemonStatus>, ClientError> {
    let probe = client.get::<DaemonStatus>("/v1/daemon");
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(status)) => Ok(Some(status)),
        Ok(Err(err)) if err.is_not_running() => Ok(None),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(ClientError::NoAnswer {
            socket: client.socket().to_path_buf(),
            log: paths.daemon_log(),
            secs: timeout.as_secs(),
            pid: lock_holder(&paths.daemon_lock()),
        }),
    }
}

/// The pid bangerd wrote into its lock file, if it did.
fn lock_holder(lock: &Path) -> Option<u32> {
    std::fs::read_to_string(lock).ok()?.trim().parse().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use banger_sys::spawn::{RecordingSpawner, SystemSpawner};

    /// The layout of an instance rooted at `dir`.
    pub fn paths_in(dir: &Path) -> Paths {
        let var = |k: &str| match k {
            "XDG_CONFIG_HOME" => Some(dir.join("config")),
            "XDG_STATE_HOME" => Some(dir.join("state")),
            "XDG_RUNTIME_DIR" => Some(dir.join("run")),
            "XDG_CACHE_HOME" => Some(dir.join("cache")),
            _ => None,
        };
        Paths::resolve(|k| var(k).map(|p| p.display().to_string()), dir, 1000)
    }

    #[tokio::test]
    async fn a_daemon_that_never_answers_is_named_with_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths_in(dir.path());
        for d in [&paths.runtime_dir, &paths.state_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(paths.daemon_lock(), "4242\n").unwrap();
        let listener = tokio::net::UnixListener::bind(paths.socket()).unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream); // accepted, never answered
            }
        });
        let client = Client::new(paths.socket());
        let err = status_within(&paths, &client, Duration::from_millis(200))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("did not answer within 0 s"), "{text}");
        assert!(text.contains("bangerd.log"), "{text}");
        assert!(text.ends_with("or end it with kill 4242"), "{text}");
        held.abort();
    }

    #[tokio::test]
    async fn a_planted_runtime_directory_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths_in(dir.path());
        // Someone else's directory, reached through a symlink where ours belongs.
        let planted = dir.path().join("planted");
        std::fs::create_dir_all(&planted).unwrap();
        std::fs::create_dir_all(paths.runtime_dir.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&planted, &paths.runtime_dir).unwrap();
        let listener =
            std::os::unix::net::UnixListener::bind(planted.join("bangerd.sock")).unwrap();
        listener.set_nonblocking(true).unwrap();

        let err = status(&paths, &Client::new(paths.socket()))
            .await
            .unwrap_err();

        let text = format!("{err:#}");
        assert!(
            text.starts_with(
                "cannot use the runtime directory (or set XDG_RUNTIME_DIR to a directory of your own): "
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} is a symlink", paths.runtime_dir.display())),
            "{text}"
        );
        assert!(
            listener.accept().is_err(),
            "nothing connected to the planted socket"
        );
    }

    #[tokio::test]
    async fn a_missing_runtime_directory_is_made_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths_in(dir.path());
        let found = status(&paths, &Client::new(paths.socket())).await.unwrap();
        assert!(found.is_none());
        let mode = std::fs::metadata(&paths.runtime_dir).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("bangerd.log");
        let text: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log, 0);
        assert!(tail.starts_with("\n  line 6\n"));
        assert!(tail.ends_with("  line 20"));
        assert_eq!(log_tail(&dir.path().join("missing"), 0), "");
        let at_19 = std::fs::read_to_string(&log)
            .unwrap()
            .find("line 19")
            .unwrap();
        assert_eq!(
            log_tail(&log, at_19 as u64),
            "\n  line 19\n  line 20",
            "an earlier start's lines are not this one's"
        );
    }

    #[tokio::test]
    async fn a_daemon_that_dies_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("state/bangerd.log");
        let script = dir.path().join("bangerd");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'config.toml: bad key' >&2\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut child = spawn(&SystemSpawner, &script, &log).unwrap();
        let client = Client::new(dir.path().join("bangerd.sock"));
        let err = wait_until_up(&client, &mut child, &log, 0)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("exited"), "{err}");
        assert!(err.contains(&log.display().to_string()), "{err}");
        assert!(err.contains("config.toml: bad key"), "{err}");
    }

    #[tokio::test]
    async fn the_daemon_starts_detached_with_its_output_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("state/bangerd.log");
        let spawner = RecordingSpawner::new(Cmd::new("true"));
        let mut child = spawn(&spawner, Path::new("/opt/b/bangerd"), &log).unwrap();
        child.wait().await.unwrap();
        let (cmd, opts) = &spawner.spawns()[0];
        assert_eq!(cmd, &Cmd::new("/opt/b/bangerd"));
        assert_eq!(opts, &SpawnOptions::detached(&log));
        assert!(log.exists(), "the log and its directory are created");
        let mode = std::fs::metadata(&log).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[tokio::test]
    async fn a_missing_daemon_says_where_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("bangerd.log");
        for (spawner, bin) in [
            (&RecordingSpawner::missing() as &dyn Spawner, "bangerd"),
            (&SystemSpawner, "/nonexistent/bangerd"),
        ] {
            let err = spawn(spawner, Path::new(bin), &log).unwrap_err();
            assert_eq!(
                format!("{err:#}"),
                format!(
                    "cannot start the daemon: {bin} not found; install bangerd next to banger or set BANGER_DAEMON_BIN"
                )
            );
        }
    }
}
