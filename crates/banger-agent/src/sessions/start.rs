//! Starting a session: the name check, the preflight that says clearly what
//! is missing, and the spawn. Owns turning a `start` request into a
//! registered session, failed or running; spawning itself is exec's
//! (`spawn.rs`: its own process group, exec's environment defaults, the
//! reaper registration), so sessions and exec start processes alike.

use std::io;
use std::path::{Path, PathBuf};

use banger_proto::{ExecRequest, SessionInfo};
use rustix::fs::Access;

use super::session::{Launch, Session, supervise};
use super::{SessionError, Sessions};
use crate::Agent;
use crate::console::chain;
use crate::spawn::{self, ChildIo};

/// What a preflight found missing.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("cwd {cwd} does not exist")]
    CwdMissing { cwd: PathBuf },
    #[error("cwd {cwd} is not a directory")]
    CwdNotDirectory { cwd: PathBuf },
    #[error("cwd {cwd} cannot be inspected")]
    CwdUnreadable {
        cwd: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("command {program:?} not found in PATH")]
    NotInPath { program: String },
    #[error("command {program:?} does not exist (looked for {path})")]
    Missing { program: String, path: PathBuf },
    #[error("command {program:?} is not an executable file ({path})")]
    NotExecutable { program: String, path: PathBuf },
}

/// A `start` request.
#[derive(Debug)]
pub struct StartRequest {
    pub name: String,
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
}

/// Starts (or records the failure of) the session `req` names.
pub fn start(agent: &Agent, req: StartRequest) -> Result<SessionInfo, SessionError> {
    let sessions: &Sessions = &agent.sessions;
    if !banger_proto::session::valid_name(&req.name) {
        return Err(SessionError::BadName { name: req.name });
    }
    let Some(program) = req.argv.first().cloned() else {
        return Err(SessionError::EmptyArgv);
    };
    // Held through the spawn (a fork and exec, quick), so two starts of
    // one name cannot both win.
    let mut map = sessions.lock();
    if map.get(&req.name).is_some_and(|s| s.is_running()) {
        return Err(SessionError::Running { name: req.name });
    }
    let cwd = req
        .cwd
        .clone()
        .unwrap_or_else(|| agent.exec.cwd.display().to_string());
    let launch = Launch {
        name: req.name.clone(),
        argv: req.argv.clone(),
        cwd: cwd.clone(),
    };
    let search_path = req
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(agent.exec.path.as_str(), |(_, v)| v.as_str());

    if let Err(e) = preflight(&program, Path::new(&cwd), search_path) {
        let failed = Session::failed(launch, chain(&e));
        sessions.insert(&mut map, failed);
        return Err(SessionError::Preflight { source: e });
    }

    let exec = ExecRequest {
        argv: req.argv,
        env: req.env,
        cwd: Some(cwd),
        tty: false,
        size: None,
    };
    let child = match spawn::spawn(&exec, &agent.exec, agent.reaper) {
        Ok(child) => child,
        Err(source) => {
            sessions.insert(&mut map, Session::failed(launch, chain(&source)));
            return Err(SessionError::Spawn {
                name: req.name,
                source,
            });
        }
    };
    let ChildIo::Pipes {
        stdin,
        stdout,
        stderr,
    } = child.io
    else {
        unreachable!("a request without tty gets pipes");
    };
    let session = Session::running(launch, child.pid, stdin, sessions.scrollback);
    tokio::spawn(supervise(session.clone(), stdout, stderr, child.exited));
    crate::console::log(format_args!(
        "session {} started as pid {}",
        req.name, child.pid
    ));
    let info = session.info();
    sessions.insert(&mut map, session);
    Ok(info)
}

/// Checks what the spawn needs, as the spawn will look for it: `cwd` a
/// directory, and `program` a path (relative to `cwd`) or a name on
/// `search_path` that is an executable file.
pub fn preflight(program: &str, cwd: &Path, search_path: &str) -> Result<(), PreflightError> {
    match std::fs::metadata(cwd) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(PreflightError::CwdNotDirectory { cwd: cwd.into() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PreflightError::CwdMissing { cwd: cwd.into() });
        }
        Err(source) => {
            return Err(PreflightError::CwdUnreadable {
                cwd: cwd.into(),
                source,
            });
        }
    }
    if program.contains('/') {
        let path = cwd.join(program);
        if !path.exists() {
            return Err(PreflightError::Missing {
                program: program.into(),
                path,
            });
        }
        if !is_executable_file(&path) {
            return Err(PreflightError::NotExecutable {
                program: program.into(),
                path,
            });
        }
        return Ok(());
    }
    let mut not_executable = None;
    for dir in search_path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if is_executable_file(&candidate) {
            return Ok(());
        }
        if not_executable.is_none() && candidate.is_file() {
            not_executable = Some(candidate);
        }
    }
    Err(match not_executable {
        Some(path) => PreflightError::NotExecutable {
            program: program.into(),
            path,
        },
        None => PreflightError::NotInPath {
            program: program.into(),
        },
    })
}

fn is_executable_file(path: &Path) -> bool {
    path.is_file() && rustix::fs::access(path, Access::EXEC_OK).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_names_the_missing_cwd() {
        let err = preflight("sh", Path::new("/root/nope-really"), "/bin").unwrap_err();
        assert_eq!(err.to_string(), "cwd /root/nope-really does not exist");
        let err = preflight("sh", Path::new("/etc/passwd"), "/bin").unwrap_err();
        assert_eq!(err.to_string(), "cwd /etc/passwd is not a directory");
    }

    #[test]
    fn preflight_names_the_missing_command() {
        let err = preflight("cargoo", Path::new("/"), "/usr/bin:/bin").unwrap_err();
        assert_eq!(err.to_string(), r#"command "cargoo" not found in PATH"#);
        let err = preflight("./nope", Path::new("/tmp"), "").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"command "./nope" does not exist (looked for /tmp/./nope)"#
        );
        let err = preflight("/etc/passwd", Path::new("/"), "").unwrap_err();
        assert!(matches!(err, PreflightError::NotExecutable { .. }), "{err}");
    }

    #[test]
    fn preflight_accepts_what_spawn_would_run() {
        preflight("sh", Path::new("/"), "/usr/bin:/bin").unwrap();
        preflight("/bin/sh", Path::new("/"), "").unwrap();
    }
}
