//! Starting children that outlive the call that starts them: supervised
//! long-lived programs (the daemon, an engine), streaming ones whose pipes
//! the caller reads or writes as they run (a `tar` feeding a guest, a KVM
//! probe read until a marker), and `exec` of a program in place of this
//! one (`ssh`).
//!
//! Callers describe the program as a [`Cmd`], say where its stdio goes and
//! whether it gets its own process group in [`SpawnOptions`], and hand both
//! to a [`Spawner`]. [`SystemSpawner`] is the real one, on
//! `tokio::process`; logic elsewhere takes a `&dyn Spawner` so tests can
//! substitute [`RecordingSpawner`], which records what it was asked to
//! start and starts a harmless stand-in instead. Failures are the
//! [`CommandError`]s of [`crate::command`]: a program missing from `PATH`
//! names the package that provides it.
//!
//! Programs run to completion for their output go through
//! [`crate::command::Runner`] instead; signalling a pid that is no longer
//! our child is [`crate::process`]'s.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;

use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};

use crate::command::{Cmd, CommandError, spawn_error, std_command};

/// Where one of a child's standard streams goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Stdio {
    /// `/dev/null`.
    Null,
    /// A pipe, handed to the caller in [`Child`].
    Piped,
    /// This process's own stream.
    #[default]
    Inherit,
    /// Appended to this file, created if missing (its directory is not).
    Append(PathBuf),
}

/// How a child is started, besides its [`Cmd`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpawnOptions {
    /// Ignored when the [`Cmd`] carries stdin bytes: those are written to a
    /// pipe from a background task, which then closes it.
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// Lead a new process group, so a Ctrl-C in our terminal or a signal to
    /// our group does not reach the child.
    pub own_process_group: bool,
    /// SIGKILL the child when its [`Child`] is dropped without being waited
    /// for; otherwise it keeps running (and is reaped in the background).
    pub kill_on_drop: bool,
}

impl SpawnOptions {
    /// A supervised background program: stdin `/dev/null`, stdout and
    /// stderr appended to `log`, its own process group, left running when
    /// its [`Child`] is dropped.
    pub fn detached(log: &Path) -> SpawnOptions {
        SpawnOptions {
            stdin: Stdio::Null,
            stdout: Stdio::Append(log.to_path_buf()),
            stderr: Stdio::Append(log.to_path_buf()),
            own_process_group: true,
            kill_on_drop: false,
        }
    }
}

/// Starts children. Implementations must be usable from several threads.
pub trait Spawner: Send + Sync {
    /// Starts `cmd` without waiting for it. Must be called inside a tokio
    /// runtime (the child's pipes and exit are watched by its reactor).
    fn spawn(&self, cmd: &Cmd, opts: &SpawnOptions) -> Result<Child, CommandError>;

    /// Replaces this process with `cmd`, which keeps this process's stdio
    /// and pid; returns only when that failed. `cmd` must carry no stdin
    /// bytes: there is no one left to write them.
    fn exec(&self, cmd: &Cmd) -> CommandError;
}

/// A started child. Its pipes are the fields the caller asked for with
/// [`Stdio::Piped`]; take them out to read or write.
#[derive(Debug)]
pub struct Child {
    program: String,
    pid: u32,
    inner: tokio::process::Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

impl Child {
    /// The pid it was started with; still the same number after it exits
    /// (by then it may name another process).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The program as its [`Cmd`] named it.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Its exit status if it has exited (reaping it), `None` if it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, CommandError> {
        self.inner.try_wait().map_err(|e| self.io_error(e))
    }

    /// Waits for it to exit. Its stdin pipe, if still held here, is closed
    /// first, so a child reading to end of input can finish.
    pub async fn wait(&mut self) -> Result<ExitStatus, CommandError> {
        drop(self.stdin.take());
        let status = self.inner.wait().await;
        status.map_err(|e| self.io_error(e))
    }

    /// Sends SIGKILL without waiting; follow with [`Child::wait`] to reap.
    pub fn start_kill(&mut self) -> Result<(), CommandError> {
        self.inner.start_kill().map_err(|e| self.io_error(e))
    }

    fn io_error(&self, source: io::Error) -> CommandError {
        CommandError::Io {
            program: self.program.clone(),
            source,
        }
    }
}

/// The real [`Spawner`], on `tokio::process`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemSpawner;

impl Spawner for SystemSpawner {
    fn spawn(&self, cmd: &Cmd, opts: &SpawnOptions) -> Result<Child, CommandError> {
        let mut command = tokio::process::Command::from(std_command(cmd));
        let stdin = match cmd.stdin {
            Some(_) => Stdio::Piped,
            None => opts.stdin.clone(),
        };
        command
            .stdin(stdio(cmd, &stdin)?)
            .stdout(stdio(cmd, &opts.stdout)?)
            .stderr(stdio(cmd, &opts.stderr)?)
            .kill_on_drop(opts.kill_on_drop);
        if opts.own_process_group {
            command.process_group(0);
        }
        let mut inner = command.spawn().map_err(|e| spawn_error(cmd, e))?;
        let pid = inner.id().unwrap_or_default();
        tracing::debug!(command = %cmd, pid, "started external program");
        let mut stdin = inner.stdin.take();
        if let (Some(bytes), Some(mut pipe)) = (cmd.stdin.clone(), stdin.take()) {
            // Errors are the child's business: a program may legitimately
            // exit without reading all its input.
            tokio::spawn(async move {
                let _ = pipe.write_all(&bytes).await;
            });
        }
        Ok(Child {
            program: cmd.program.clone(),
            pid,
            stdout: inner.stdout.take(),
            stderr: inner.stderr.take(),
            stdin,
            inner,
        })
    }

    fn exec(&self, cmd: &Cmd) -> CommandError {
        if cmd.stdin.is_some() {
            return CommandError::Spawn {
                program: cmd.program.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "exec cannot feed stdin bytes"),
            };
        }
        let err = std_command(cmd).exec();
        spawn_error(cmd, err)
    }
}

fn stdio(cmd: &Cmd, s: &Stdio) -> Result<std::process::Stdio, CommandError> {
    Ok(match s {
        Stdio::Null => std::process::Stdio::null(),
        Stdio::Piped => std::process::Stdio::piped(),
        Stdio::Inherit => std::process::Stdio::inherit(),
        Stdio::Append(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| CommandError::OutputFile {
                program: cmd.program.clone(),
                path: path.clone(),
                source,
            })?
            .into(),
    })
}

/// A [`Spawner`] for tests: records every [`Cmd`] it is asked to spawn or
/// exec, and spawns a stand-in program in its place (keeping the caller's
/// working directory, environment, stdin bytes and [`SpawnOptions`]), or
/// fails as if the program were not installed. `exec` never replaces the
/// test process: it records and fails.
#[derive(Debug)]
pub struct RecordingSpawner {
    stand_in: Option<Cmd>,
    spawns: Mutex<Vec<(Cmd, SpawnOptions)>>,
    execs: Mutex<Vec<Cmd>>,
}

impl RecordingSpawner {
    /// Runs `stand_in`'s program and arguments (plus its environment) for
    /// every spawn.
    pub fn new(stand_in: Cmd) -> RecordingSpawner {
        RecordingSpawner::with(Some(stand_in))
    }

    /// Fails every spawn and exec with [`CommandError::not_found`].
    pub fn missing() -> RecordingSpawner {
        RecordingSpawner::with(None)
    }

    fn with(stand_in: Option<Cmd>) -> RecordingSpawner {
        RecordingSpawner {
            stand_in,
            spawns: Mutex::new(Vec::new()),
            execs: Mutex::new(Vec::new()),
        }
    }

    /// What was spawned so far, in order.
    pub fn spawns(&self) -> Vec<(Cmd, SpawnOptions)> {
        self.spawns.lock().unwrap().clone()
    }

    /// What was exec'd so far, in order.
    pub fn execs(&self) -> Vec<Cmd> {
        self.execs.lock().unwrap().clone()
    }
}

impl Spawner for RecordingSpawner {
    fn spawn(&self, cmd: &Cmd, opts: &SpawnOptions) -> Result<Child, CommandError> {
        self.spawns
            .lock()
            .unwrap()
            .push((cmd.clone(), opts.clone()));
        let Some(stand_in) = &self.stand_in else {
            return Err(CommandError::not_found(&cmd.program));
        };
        let mut actual = Cmd {
            program: stand_in.program.clone(),
            args: stand_in.args.clone(),
            ..cmd.clone()
        };
        actual.env.extend(stand_in.env.iter().cloned());
        let mut child = SystemSpawner.spawn(&actual, opts)?;
        child.program = cmd.program.clone();
        Ok(child)
    }

    fn exec(&self, cmd: &Cmd) -> CommandError {
        self.execs.lock().unwrap().push(cmd.clone());
        match &self.stand_in {
            None => CommandError::not_found(&cmd.program),
            Some(_) => CommandError::Spawn {
                program: cmd.program.clone(),
                source: io::Error::other("RecordingSpawner does not replace the test process"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn sh(script: &str) -> Cmd {
        Cmd::new("sh").args(["-c", script])
    }

    fn piped_stdout() -> SpawnOptions {
        SpawnOptions {
            stdout: Stdio::Piped,
            ..SpawnOptions::default()
        }
    }

    #[tokio::test]
    async fn piped_stdout_is_read_while_the_child_runs() {
        let mut child = SystemSpawner
            .spawn(&sh("echo ready; exec sleep 5"), &piped_stdout())
            .unwrap();
        assert!(child.pid() > 0);
        let mut buf = [0u8; 6];
        child
            .stdout
            .take()
            .unwrap()
            .read_exact(&mut buf)
            .await
            .unwrap();
        assert_eq!(&buf, b"ready\n");
        assert!(child.try_wait().unwrap().is_none(), "still running");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    #[tokio::test]
    async fn stdin_bytes_are_fed_and_closed() {
        let mut child = SystemSpawner
            .spawn(&Cmd::new("cat").stdin(b"a\0b\0".to_vec()), &piped_stdout())
            .unwrap();
        let mut out = Vec::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, b"a\0b\0");
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn detached_output_is_appended_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("engine.log");
        std::fs::write(&log, "earlier\n").unwrap();
        let opts = SpawnOptions::detached(&log);
        let mut child = SystemSpawner
            .spawn(&sh("echo out; echo err >&2"), &opts)
            .unwrap();
        assert!(child.wait().await.unwrap().success());
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "earlier\nout\nerr\n"
        );
    }

    #[tokio::test]
    async fn own_process_group_makes_the_child_its_leader() {
        let opts = SpawnOptions {
            own_process_group: true,
            ..SpawnOptions::default()
        };
        let mut child = SystemSpawner.spawn(&sh("exec sleep 5"), &opts).unwrap();
        let pid = rustix::process::Pid::from_raw(child.pid() as i32);
        let group = rustix::process::getpgid(pid).unwrap();
        assert_eq!(group.as_raw_nonzero(), pid.unwrap().as_raw_nonzero());
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }

    #[tokio::test]
    async fn a_killed_child_reports_the_signal() {
        let mut child = SystemSpawner
            .spawn(&sh("exec sleep 5"), &SpawnOptions::default())
            .unwrap();
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    #[tokio::test]
    async fn a_missing_program_names_the_package_to_install() {
        let err = SystemSpawner
            .spawn(
                &Cmd::new("qemu-system-x86_64-nope"),
                &SpawnOptions::default(),
            )
            .unwrap_err();
        assert!(matches!(err, CommandError::NotFound { .. }), "{err:?}");
        let err = RecordingSpawner::missing()
            .spawn(&Cmd::new("tar"), &SpawnOptions::default())
            .unwrap_err();
        assert_eq!(err.to_string(), "tar not found in PATH: install tar");
    }

    #[tokio::test]
    async fn an_unopenable_log_is_named_in_the_error() {
        let opts = SpawnOptions::detached(Path::new("/nonexistent/banger/engine.log"));
        let err = SystemSpawner.spawn(&sh("true"), &opts).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open /nonexistent/banger/engine.log for the output of sh"
        );
    }

    #[test]
    fn exec_of_a_missing_program_returns_instead_of_replacing_us() {
        let err = SystemSpawner.exec(&Cmd::new("banger-no-such-program"));
        assert!(matches!(err, CommandError::NotFound { .. }), "{err:?}");
        let err = SystemSpawner.exec(&Cmd::new("cat").stdin(b"x".to_vec()));
        assert!(matches!(err, CommandError::Spawn { .. }), "{err:?}");
    }
}
