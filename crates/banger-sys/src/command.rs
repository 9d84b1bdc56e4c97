//! Running external programs: the one place banger's logic starts a program
//! and waits for it (`mkfs.ext4`, `apt-get`, `dpkg-deb`, `resize2fs`, …).
//!
//! Callers describe a run as a [`Cmd`] (program, arguments, working
//! directory, extra environment, bytes for stdin) and hand it to a
//! [`Runner`]. [`SystemRunner`] is the real one; logic elsewhere takes a
//! `&dyn Runner` so unit tests drive it with a fake that answers from a
//! table. [`Runner::run_lines`] is the same run for programs that take a
//! while (`mmdebstrap`): their output lines reach a callback as they are
//! printed. A run succeeds only when the program exits 0; otherwise the error
//! names the program and carries the last lines of its stderr, and a program
//! missing from `PATH` says which package provides it.
//!
//! Long-lived or streaming children (engines, the daemon itself, a `tar`
//! whose output is streamed) are started through [`crate::spawn`], which
//! takes the same [`Cmd`] and reports the same [`CommandError`].

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use crate::cancel::Cancel;
use std::sync::Arc;

/// How many trailing stderr lines a [`CommandError::Failed`] keeps.
const STDERR_TAIL_LINES: usize = 8;

/// One program run, described but not yet started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmd {
    /// A name looked up in `PATH`, or a path.
    pub program: String,
    pub args: Vec<OsString>,
    /// Working directory; the caller's when `None`.
    pub cwd: Option<PathBuf>,
    /// Added to (or overriding) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Written to the program's stdin, which is then closed; stdin is
    /// `/dev/null` when `None`.
    pub stdin: Option<Vec<u8>>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Cmd {
        Cmd {
            program: program.into(),
            ..Cmd::default()
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Cmd {
        self.cwd = Some(dir.into());
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    /// The arguments as (lossy) strings, for fakes and log lines.
    pub fn args_lossy(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }
}

impl fmt::Display for Cmd {
    /// A shell-like rendering for logs; not meant to be pasted into a shell.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for a in self.args_lossy() {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"') {
                write!(f, " {a:?}")?;
            } else {
                write!(f, " {a}")?;
            }
        }
        Ok(())
    }
}

/// What a successful run printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{program} not found in PATH: {hint}")]
    NotFound { program: String, hint: String },
    #[error("could not start {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {} for the output of {program}", .path.display())]
    OutputFile {
        program: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lost contact with {program} while it ran")]
    Io {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} {}{}", describe_status(*.code, *.signal), render_tail(.stderr_tail))]
    Failed {
        program: String,
        /// The exit code, when it exited.
        code: Option<i32>,
        /// The signal that killed it, when it was killed.
        signal: Option<i32>,
        /// Its last stderr lines (or stdout lines when stderr was empty).
        stderr_tail: String,
    },
    /// Stopped by a [`crate::cancel::Cancel`], or not started after one.
    #[error("{program} was stopped: the operation was cancelled")]
    Cancelled { program: String },
}

impl CommandError {
    pub fn program(&self) -> &str {
        match self {
            CommandError::NotFound { program, .. }
            | CommandError::Spawn { program, .. }
            | CommandError::OutputFile { program, .. }
            | CommandError::Io { program, .. }
            | CommandError::Failed { program, .. }
            | CommandError::Cancelled { program } => program,
        }
    }

    /// Builds the error [`SystemRunner`] reports for a program missing from
    /// `PATH`, so fakes can produce the same one.
    pub fn not_found(program: &str) -> CommandError {
        CommandError::NotFound {
            program: program.to_string(),
            hint: install_hint(program),
        }
    }
}

fn describe_status(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended abnormally".to_string(),
    }
}

fn render_tail(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n  {}", tail.replace('\n', "\n  "))
    }
}

/// What to tell a user whose `PATH` lacks `program`: the Debian package that
/// ships it, for the programs banger drives.
pub fn install_hint(program: &str) -> String {
    let base = Path::new(program)
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or(program);
    let package = match base {
        "mkfs.ext4" | "mke2fs" | "resize2fs" | "e2fsck" | "debugfs" | "dumpe2fs" | "tune2fs" => {
            "e2fsprogs"
        }
        "apt-get" | "apt-cache" | "apt-config" => "apt",
        "dpkg-deb" | "dpkg" => "dpkg",
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-img" => "qemu-utils",
        "mmdebstrap" => "mmdebstrap",
        "debootstrap" => "debootstrap",
        "tar" => "tar",
        "depmod" => "kmod",
        "dnsmasq" => "dnsmasq",
        "nft" => "nftables",
        "ssh" | "ssh-keygen" => "openssh-client",
        "cpio" => "cpio",
        "busybox" => "busybox-static",
        "firecracker" => {
            return "install firecracker or set firecracker_bin in the config".to_string();
        }
        _ => return "install it or add its directory to PATH".to_string(),
    };
    format!("install {package}")
}

/// Runs programs to completion. Implementations must be usable from several
/// threads (the daemon runs builds on blocking worker threads).
pub trait Runner: Send + Sync {
    /// Runs `cmd` to completion; exit status 0 is the only success.
    fn run(&self, cmd: &Cmd) -> Result<Output, CommandError>;

    /// [`Runner::run`] for long runs whose output is progress: hands each
    /// line the program prints, on stdout or stderr, to `line` as it comes
    /// (a line ends at `\n` or `\r`; blank lines are skipped). The default
    /// replays the output of a successful [`Runner::run`], which is all a
    /// fake needs.
    fn run_lines(&self, cmd: &Cmd, line: &mut dyn FnMut(&str)) -> Result<Output, CommandError> {
        let out = self.run(cmd)?;
        each_line(&out.stdout, line);
        each_line(&out.stderr, line);
        Ok(out)
    }

    /// This runner for a run `cancel` may stop mid-program, when it can:
    /// the system runner can ([`CancellableRunner`]); see [`cancellable`].
    fn stopped_by(&self, _cancel: &Cancel) -> Option<Arc<dyn Runner>> {
        None
    }
}

/// `runner` for a run `cancel` stops: the running program signalled where
/// the runner can do that ([`Runner::stopped_by`]), and in any case no
/// program started once cancelled.
pub fn cancellable(runner: Arc<dyn Runner>, cancel: &Cancel) -> Arc<dyn Runner> {
    runner.stopped_by(cancel).unwrap_or_else(|| {
        Arc::new(Checked {
            inner: runner,
            cancel: cancel.clone(),
        })
    })
}

/// A runner that refuses to start programs once its run is cancelled.
struct Checked {
    inner: Arc<dyn Runner>,
    cancel: Cancel,
}

impl Runner for Checked {
    fn run(&self, cmd: &Cmd) -> Result<Output, CommandError> {
        if self.cancel.is_cancelled() {
            return Err(cancelled(cmd));
        }
        self.inner.run(cmd)
    }

    fn run_lines(&self, cmd: &Cmd, line: &mut dyn FnMut(&str)) -> Result<Output, CommandError> {
        if self.cancel.is_cancelled() {
            return Err(cancelled(cmd));
        }
        self.inner.run_lines(cmd, line)
    }
}

/// The real [`Runner`], on `std::process`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, CommandError> {
        run_to_end(cmd, None)
    }

    fn run_lines(&self, cmd: &Cmd, line: &mut dyn FnMut(&str)) -> Result<Output, CommandError> {
        run_lines_to_end(cmd, line, None)
    }

    fn stopped_by(&self, cancel: &Cancel) -> Option<Arc<dyn Runner>> {
        Some(Arc::new(CancellableRunner {
            cancel: cancel.clone(),
        }))
    }
}

/// [`SystemRunner`] that a [`Cancel`] can stop: each program leads a
/// process group of its own, which cancelling signals (see
/// [`crate::cancel`]); once cancelled, nothing more starts and a run ends
/// in [`CommandError::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancellableRunner {
    pub cancel: Cancel,
}

impl Runner for CancellableRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, CommandError> {
        run_to_end(cmd, Some(&self.cancel))
    }

    fn run_lines(&self, cmd: &Cmd, line: &mut dyn FnMut(&str)) -> Result<Output, CommandError> {
        run_lines_to_end(cmd, line, Some(&self.cancel))
    }
}

/// Starts `cmd` for a run `cancel` may stop: refused once cancelled, else
/// in a process group of its own, registered with `cancel`.
fn spawn_for(
    cmd: &Cmd,
    cancel: Option<&Cancel>,
) -> Result<(std::process::Child, Option<crate::cancel::Registered>), CommandError> {
    let Some(cancel) = cancel else {
        return Ok((spawn(cmd, false)?, None));
    };
    if cancel.is_cancelled() {
        return Err(cancelled(cmd));
    }
    let child = spawn(cmd, true)?;
    let registered = cancel.register(child.id());
    Ok((child, Some(registered)))
}

fn cancelled(cmd: &Cmd) -> CommandError {
    CommandError::Cancelled {
        program: cmd.program.clone(),
    }
}

fn run_to_end(cmd: &Cmd, cancel: Option<&Cancel>) -> Result<Output, CommandError> {
    let started = Instant::now();
    let (mut child, registered) = spawn_for(cmd, cancel)?;
    let stdin_pipe = child.stdin.take();
    // Feed stdin from a second thread while this one drains stdout and
    // stderr, so neither side can block on a full pipe.
    let (output, stdin_result) = std::thread::scope(|scope| {
        let writer = stdin_pipe.map(|mut pipe| {
            let data = cmd.stdin.as_deref().unwrap_or_default();
            scope.spawn(move || pipe.write_all(data))
        });
        let output = child.wait_with_output();
        let stdin_result = writer.map(|w| w.join().unwrap_or(Ok(())));
        (output, stdin_result)
    });
    let io_err = |source| CommandError::Io {
        program: cmd.program.clone(),
        source,
    };
    let output = output.map_err(io_err)?;
    drop(registered);
    tracing::debug!(
        command = %cmd,
        status = %output.status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ran external program"
    );
    if !output.status.success() {
        if cancel.is_some_and(Cancel::is_cancelled) {
            return Err(cancelled(cmd));
        }
        return Err(failed(cmd, output.status, &output.stdout, &output.stderr));
    }
    // A program may legitimately exit without reading all its input.
    if let Some(Err(e)) = stdin_result
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        return Err(io_err(e));
    }
    Ok(Output {
        stdout: output.stdout,
        stderr: output.stderr,
    })
}

fn run_lines_to_end(
    cmd: &Cmd,
    line: &mut dyn FnMut(&str),
    cancel: Option<&Cancel>,
) -> Result<Output, CommandError> {
    let started = Instant::now();
    let (mut child, registered) = spawn_for(cmd, cancel)?;
    let io_err = |source| CommandError::Io {
        program: cmd.program.clone(),
        source,
    };
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let mut out = Output::default();
    // Reader threads send (is_stderr, line) here; this thread calls
    // `line`, which need not be Send.
    let (tx, rx) = std::sync::mpsc::channel::<(bool, Vec<u8>)>();
    let status = std::thread::scope(|scope| {
        if let Some(mut pipe) = pipes.0 {
            let data = cmd.stdin.as_deref().unwrap_or_default();
            scope.spawn(move || pipe.write_all(data));
        }
        if let Some(pipe) = pipes.1 {
            let tx = tx.clone();
            scope.spawn(move || pump(pipe, false, tx));
        }
        if let Some(pipe) = pipes.2 {
            let tx = tx.clone();
            scope.spawn(move || pump(pipe, true, tx));
        }
        drop(tx);
        for (is_stderr, bytes) in rx {
            each_line(&bytes, line);
            if is_stderr {
                &mut out.stderr
            } else {
                &mut out.stdout
            }
            .extend_from_slice(&bytes);
        }
        child.wait()
    });
    let status = status.map_err(io_err)?;
    drop(registered);
    tracing::debug!(
        command = %cmd,
        status = %status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ran external program"
    );
    if !status.success() {
        if cancel.is_some_and(Cancel::is_cancelled) {
            return Err(cancelled(cmd));
        }
        return Err(failed(cmd, status, &out.stdout, &out.stderr));
    }
    Ok(out)
}

/// Sends what `pipe` yields to `tx` a line at a time, until end of file.
fn pump(pipe: impl io::Read, is_stderr: bool, tx: std::sync::mpsc::Sender<(bool, Vec<u8>)>) {
    let mut reader = io::BufReader::new(pipe);
    let mut buf = Vec::new();
    while matches!(io::BufRead::read_until(&mut reader, b'\n', &mut buf), Ok(n) if n > 0) {
        if tx.send((is_stderr, std::mem::take(&mut buf))).is_err() {
            return;
        }
    }
}

/// Calls `line` with each non-blank line of `bytes`, split at `\n` or `\r`.
fn each_line(bytes: &[u8], line: &mut dyn FnMut(&str)) {
    for l in String::from_utf8_lossy(bytes).split(['\n', '\r']) {
        if !l.trim().is_empty() {
            line(l.trim_end());
        }
    }
}

/// Starts `cmd` with stdout and stderr piped, and stdin piped when it has
/// bytes for it (`/dev/null` otherwise); as the leader of a new process
/// group when `own_group`.
fn spawn(cmd: &Cmd, own_group: bool) -> Result<std::process::Child, CommandError> {
    let mut command = std_command(cmd);
    if own_group {
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
    }
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if cmd.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    command.spawn().map_err(|source| spawn_error(cmd, source))
}

/// `cmd` as a `std::process::Command` (program, arguments, working
/// directory, environment), stdio left to the caller. Bare names are
/// resolved here, so the sbin fallback of [`search_path`] applies.
pub(crate) fn std_command(cmd: &Cmd) -> Command {
    let program = if cmd.program.contains('/') {
        None
    } else {
        which(&cmd.program)
    };
    let mut command = Command::new(program.as_deref().unwrap_or(Path::new(&cmd.program)));
    command.args(&cmd.args);
    if let Some(dir) = &cmd.cwd {
        command.current_dir(dir);
    }
    command.envs(cmd.env.iter().map(|(k, v)| (k, v)));
    command
}

/// The error for a failed start: [`CommandError::NotFound`] (with its
/// install hint) when a bare name is missing from the search path.
pub(crate) fn spawn_error(cmd: &Cmd, source: io::Error) -> CommandError {
    let bare_name = !cmd.program.contains('/');
    if source.kind() == io::ErrorKind::NotFound && bare_name && which(&cmd.program).is_none() {
        return CommandError::not_found(&cmd.program);
    }
    CommandError::Spawn {
        program: cmd.program.clone(),
        source,
    }
}

fn failed(cmd: &Cmd, status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> CommandError {
    let source = if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        stderr
    } else {
        stdout
    };
    CommandError::Failed {
        program: cmd.program.clone(),
        code: status.code(),
        signal: status.signal(),
        stderr_tail: tail_lines(source, STDERR_TAIL_LINES),
    }
}

/// The last `n` non-blank lines of `bytes`, trimmed.
pub fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Finds `program` the way a shell would: a name containing `/` is taken as
/// a path, anything else is searched in `PATH`. Only executable regular
/// files count.
pub fn which(program: &str) -> Option<PathBuf> {
    which_in(program, &search_path())
}

/// `PATH`, then the sbin directories: a normal user's PATH on Debian has
/// no /usr/sbin, where mkfs.ext4, resize2fs, nft and dnsmasq live, and
/// those run fine unprivileged on files of ours.
pub fn search_path() -> OsString {
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        if !std::env::split_paths(&path).any(|d| d == Path::new(extra)) {
            if !path.is_empty() {
                path.push(":");
            }
            path.push(extra);
        }
    }
    path
}

/// [`which`] with an explicit search path (a `PATH`-style list).
pub fn which_in(program: &str, search_path: &OsStr) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    std::env::split_paths(search_path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {

    #[test]
    fn sbin_directories_are_searched_after_path() {
        let p = search_path();
        let dirs: Vec<PathBuf> = std::env::split_paths(&p).collect();
        assert!(
            dirs.contains(&PathBuf::from("/usr/sbin")) && dirs.contains(&PathBuf::from("/sbin"))
        );
        let path_dirs: Vec<PathBuf> =
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
        assert_eq!(&dirs[..path_dirs.len()], &path_dirs[..], "PATH comes first");
    }

    use super::*;

    #[test]
    fn successful_run_returns_stdout() {
        let out = SystemRunner
            .run(&Cmd::new("sh").args(["-c", "printf hello"]))
            .unwrap();
        assert_eq!(out.stdout, b"hello");
    }

    #[test]
    fn stdin_bytes_reach_the_program() {
        let out = SystemRunner
            .run(&Cmd::new("cat").stdin(b"through stdin".to_vec()))
            .unwrap();
        assert_eq!(out.stdout_lossy(), "through stdin");
    }

    #[test]
    fn large_stdin_and_stdout_do_not_deadlock() {
        let data = vec![b'x'; 4 << 20];
        let out = SystemRunner
            .run(&Cmd::new("cat").stdin(data.clone()))
            .unwrap();
        assert_eq!(out.stdout.len(), data.len());
    }

    #[test]
    fn cwd_and_env_are_applied() {
        let dir = std::env::temp_dir();
        let cmd = Cmd::new("sh")
            .args(["-c", "pwd; printf %s \"$BANGER_TEST_VAR\""])
            .cwd(&dir)
            .env("BANGER_TEST_VAR", "v1");
        let out = SystemRunner.run(&cmd).unwrap().stdout_lossy();
        let canonical = dir.canonicalize().unwrap();
        assert!(out.starts_with(canonical.to_str().unwrap()), "{out}");
        assert!(out.ends_with("v1"), "{out}");
    }

    #[test]
    fn missing_program_names_the_package_to_install() {
        let err = SystemRunner
            .run(&Cmd::new("banger-no-such-program"))
            .unwrap_err();
        assert!(matches!(err, CommandError::NotFound { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "banger-no-such-program not found in PATH: install it or add its directory to PATH"
        );
        assert_eq!(
            CommandError::not_found("mkfs.ext4").to_string(),
            "mkfs.ext4 not found in PATH: install e2fsprogs"
        );
    }

    #[test]
    fn non_zero_exit_carries_the_last_stderr_lines() {
        let script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i >&2; done; exit 3";
        let err = SystemRunner
            .run(&Cmd::new("sh").args(["-c", script]))
            .unwrap_err();
        let CommandError::Failed {
            code, stderr_tail, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*code, Some(3));
        assert!(
            stderr_tail.starts_with("line3\n") && stderr_tail.ends_with("line10"),
            "{stderr_tail}"
        );
        assert!(
            err.to_string()
                .starts_with("sh exited with status 3:\n  line3\n  line4"),
            "{err}"
        );
    }

    #[test]
    fn run_lines_streams_both_streams_and_keeps_the_output() {
        let script = "echo one; echo two >&2; printf 'three\\rfour\\n'; echo; exit 0";
        let mut lines = Vec::new();
        let out = SystemRunner
            .run_lines(&Cmd::new("sh").args(["-c", script]), &mut |l| {
                lines.push(l.to_string())
            })
            .unwrap();
        lines.sort();
        assert_eq!(lines, ["four", "one", "three", "two"]);
        assert_eq!(out.stdout_lossy(), "one\nthree\rfour\n\n");
        assert_eq!(out.stderr, b"two\n");
    }

    #[test]
    fn a_cancelled_run_stops_its_program_and_its_children_and_starts_no_more() {
        let runner = CancellableRunner::default();
        let cancel = runner.cancel.clone();
        let started = std::time::Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let run = std::thread::spawn(move || {
            // A shell whose child sleeps: the whole group must go.
            runner.run_lines(
                &Cmd::new("sh").args(["-c", "echo up; sleep 60; echo never"]),
                &mut |l| {
                    let _ = tx.send(l.to_string());
                },
            )
        });
        assert_eq!(rx.recv().unwrap(), "up");
        cancel.cancel();
        let err = run.join().unwrap().unwrap_err();
        assert!(
            matches!(&err, CommandError::Cancelled { program } if program == "sh"),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        let again = CancellableRunner { cancel };
        assert!(matches!(
            again.run(&Cmd::new("true")),
            Err(CommandError::Cancelled { .. })
        ));
        assert!(
            CancellableRunner::default().run(&Cmd::new("true")).is_ok(),
            "an uncancelled run runs"
        );
    }

    #[test]
    fn run_lines_failure_carries_the_stderr_tail() {
        let err = SystemRunner
            .run_lines(
                &Cmd::new("sh").args(["-c", "echo E: no such suite >&2; exit 1"]),
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "sh exited with status 1:\n  E: no such suite"
        );
    }

    #[test]
    fn killed_program_reports_the_signal() {
        let err = SystemRunner
            .run(&Cmd::new("sh").args(["-c", "kill -9 $$"]))
            .unwrap_err();
        assert_eq!(err.to_string(), "sh was killed by signal 9");
    }

    #[test]
    fn missing_working_directory_is_not_reported_as_missing_program() {
        let err = SystemRunner
            .run(&Cmd::new("sh").cwd("/nonexistent/banger-dir"))
            .unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err:?}");
    }

    #[test]
    fn which_finds_only_executable_files() {
        let dir = tempdir();
        let exe = dir.join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("plain"), "").unwrap();
        std::fs::create_dir(dir.join("subdir")).unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.to_str().unwrap()]).unwrap();
        assert_eq!(which_in("tool", &path), Some(exe.clone()));
        assert_eq!(which_in("plain", &path), None);
        assert_eq!(which_in("subdir", &path), None);
        assert_eq!(which_in(exe.to_str().unwrap(), OsStr::new("")), Some(exe));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn display_quotes_arguments_with_spaces() {
        let cmd = Cmd::new("mkfs.ext4").args(["-L", "my label", "-q"]);
        assert_eq!(cmd.to_string(), r#"mkfs.ext4 -L "my label" -q"#);
    }

    fn tempdir() -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("banger-sys-which-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
