//! Starting the process of an exec request: program lookup, environment,
//! working directory, process group, and its stdio as pipes or a
//! pseudo-terminal. Owns turning an [`ExecRequest`] into a running child
//! registered with the [`Reaper`]; does not own the stream protocol around
//! it (`exec.rs`). A command with pipes starts by `posix_spawn`
//! (`banger_sys::vfork`), one with a tty by `Command` (a fork: it must take
//! its controlling terminal before exec).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use banger_proto::{ExecRequest, ExitStatus};
use rustix::fs::Access;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::fdio::FdStream;
use crate::reaper::Reaper;

/// The `PATH` children get unless the request sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a child gets when the request does not say otherwise.
#[derive(Debug, Clone)]
pub struct ExecDefaults {
    pub path: String,
    pub home: String,
    pub term: String,
    /// Working directory when the request names none; `/` if it is missing.
    pub cwd: PathBuf,
}

impl Default for ExecDefaults {
    fn default() -> Self {
        ExecDefaults {
            path: DEFAULT_PATH.into(),
            home: "/root".into(),
            term: "xterm-256color".into(),
            cwd: "/root".into(),
        }
    }
}

/// A started child.
#[derive(Debug)]
pub struct Child {
    pub pid: u32,
    /// Resolves when the reaper collects the child.
    pub exited: oneshot::Receiver<ExitStatus>,
    pub io: ChildIo,
}

/// The host's side of the child's stdio.
#[derive(Debug)]
pub enum ChildIo {
    Pipes {
        stdin: pipe::Sender,
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
    /// The pty master: output and input of the terminal the child runs on.
    Pty(FdStream),
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("argv is empty")]
    EmptyArgv,
    #[error("{program}: command not found")]
    NotFound { program: String },
    #[error("{path}: not an executable file")]
    NotExecutable { path: PathBuf },
    #[error("working directory {cwd} is not a directory")]
    BadCwd { cwd: PathBuf },
    #[error("cannot allocate a pseudo-terminal")]
    Pty {
        #[source]
        source: io::Error,
    },
    #[error("cannot start {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SpawnError {
    /// The [`banger_proto::ErrorBody`] code the host maps to an exit status
    /// (`not_found` → 127, `spawn_failed` → 126).
    pub fn code(&self) -> &'static str {
        match self {
            SpawnError::EmptyArgv => "bad_request",
            SpawnError::NotFound { .. } => "not_found",
            _ => "spawn_failed",
        }
    }
}

/// Starts `req`'s process in its own process group (or session, with a
/// tty) and registers it with `reaper`.
pub fn spawn(
    req: &ExecRequest,
    defaults: &ExecDefaults,
    reaper: &Reaper,
) -> Result<Child, SpawnError> {
    let program = req.argv.first().ok_or(SpawnError::EmptyArgv)?;
    let cwd = match &req.cwd {
        Some(cwd) => PathBuf::from(cwd),
        None if defaults.cwd.is_dir() => defaults.cwd.clone(),
        None => PathBuf::from("/"),
    };
    if !cwd.is_dir() {
        return Err(SpawnError::BadCwd { cwd });
    }
    let env = environment(req, defaults);
    let search_path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(&defaults.path);
    let path = resolve(program, search_path, &cwd)?;

    let spawn_error = |source| SpawnError::Spawn {
        path: path.clone(),
        source,
    };

    if req.tty {
        let mut cmd = Command::new(&path);
        cmd.arg0(program)
            .args(&req.argv[1..])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&cwd);
        banger_sys::process::default_signals_on_exec(&mut cmd);
        let size = req.size.map(|s| (s.rows, s.cols));
        let pty = banger_sys::pty::open(size).map_err(|source| SpawnError::Pty { source })?;
        banger_sys::pty::attach_as_controlling_terminal(&mut cmd, &pty.slave)
            .map_err(|source| SpawnError::Pty { source })?;
        let (_, pid, exited) = reaper
            .spawn(|| {
                let child = cmd.spawn()?;
                Ok(((), child.id()))
            })
            .map_err(spawn_error)?;
        // The master must see the hang-up once the child is gone, so the
        // parent keeps no slave descriptor.
        drop(cmd);
        drop(pty.slave);
        let master =
            FdStream::pty_master(pty.master).map_err(|source| SpawnError::Pty { source })?;
        return Ok(Child {
            pid,
            exited,
            io: ChildIo::Pty(master),
        });
    }

    // Without a tty, posix_spawn (a vfork) instead of Command's fork: see
    // banger_sys::vfork.
    let pipes = || -> io::Result<_> { Ok((io::pipe()?, io::pipe()?, io::pipe()?)) };
    let ((stdin_r, stdin_w), (stdout_r, stdout_w), (stderr_r, stderr_w)) =
        pipes().map_err(spawn_error)?;
    let (_, pid, exited) = reaper
        .spawn(|| {
            let pid = banger_sys::vfork::spawn(&banger_sys::vfork::Spawn {
                program: &path,
                argv: &req.argv,
                env: &env,
                cwd: &cwd,
                stdio: [stdin_r.as_fd(), stdout_w.as_fd(), stderr_w.as_fd()],
                process_group: true,
            })?;
            Ok(((), pid))
        })
        .map_err(spawn_error)?;
    // The child's ends are the child's alone: its exit must end our reads.
    drop((stdin_r, stdout_w, stderr_w));
    let pipes = (|| -> io::Result<ChildIo> {
        Ok(ChildIo::Pipes {
            stdin: pipe::Sender::from_owned_fd(OwnedFd::from(stdin_w))?,
            stdout: pipe::Receiver::from_owned_fd(OwnedFd::from(stdout_r))?,
            stderr: pipe::Receiver::from_owned_fd(OwnedFd::from(stderr_r))?,
        })
    })();
    match pipes {
        Ok(io) => Ok(Child { pid, exited, io }),
        Err(source) => {
            if let Some(pid) = crate::reaper::pid(pid) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::Kill);
            }
            Err(spawn_error(source))
        }
    }
}

/// The child's environment: `PATH`, `HOME`, `TERM`, then the request's own
/// variables, later ones replacing earlier ones of the same name.
fn environment(req: &ExecRequest, defaults: &ExecDefaults) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), defaults.path.clone()),
        ("HOME".into(), defaults.home.clone()),
        ("TERM".into(), defaults.term.clone()),
    ];
    for (k, v) in &req.env {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

/// Finds `program` as a shell would: a name with a `/` is a path (relative
/// to `cwd`), anything else is looked up in `search_path`.
fn resolve(program: &str, search_path: &str, cwd: &Path) -> Result<PathBuf, SpawnError> {
    if program.contains('/') {
        let path = cwd.join(program);
        if !path.exists() {
            return Err(SpawnError::NotFound {
                program: program.into(),
            });
        }
        if !is_executable_file(&path) {
            return Err(SpawnError::NotExecutable { path });
        }
        return Ok(path);
    }
    let mut not_executable = None;
    for dir in search_path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if is_executable_file(&candidate) {
            return Ok(candidate);
        }
        if not_executable.is_none() && candidate.is_file() {
            not_executable = Some(candidate);
        }
    }
    match not_executable {
        Some(path) => Err(SpawnError::NotExecutable { path }),
        None => Err(SpawnError::NotFound {
            program: program.into(),
        }),
    }
}

fn is_executable_file(path: &Path) -> bool {
    path.is_file() && rustix::fs::access(path, Access::EXEC_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, mode: u32) {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn lookup_takes_the_first_executable_on_the_path() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        file(a.path(), "tool", 0o644);
        file(b.path(), "tool", 0o755);
        let search = format!("{}:{}", a.path().display(), b.path().display());
        assert_eq!(
            resolve("tool", &search, Path::new("/")).unwrap(),
            b.path().join("tool")
        );
    }

    #[test]
    fn lookup_tells_missing_from_not_executable() {
        let a = tempfile::tempdir().unwrap();
        file(a.path(), "data", 0o644);
        let search = a.path().display().to_string();
        assert_eq!(
            resolve("nope", &search, Path::new("/")).unwrap_err().code(),
            "not_found"
        );
        assert_eq!(
            resolve("data", &search, Path::new("/")).unwrap_err().code(),
            "spawn_failed"
        );
        assert_eq!(
            resolve("./data", "", a.path()).unwrap_err().code(),
            "spawn_failed"
        );
        assert_eq!(
            resolve("./nope", "", a.path()).unwrap_err().code(),
            "not_found"
        );
    }

    #[test]
    fn request_env_overrides_the_defaults() {
        let req = ExecRequest {
            argv: vec!["env".into()],
            env: vec![("TERM".into(), "dumb".into()), ("FOO".into(), "1".into())],
            ..Default::default()
        };
        let env = environment(&req, &ExecDefaults::default());
        assert!(env.contains(&("TERM".into(), "dumb".into())));
        assert!(env.contains(&("FOO".into(), "1".into())));
        assert!(env.contains(&("HOME".into(), "/root".into())));
    }
}
