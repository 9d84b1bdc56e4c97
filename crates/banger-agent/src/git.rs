//! The host user's git identity in root's global git config, so commits
//! made in the guest carry the user's name. Applied at boot from the config
//! drive (`setup.rs`) and after a restore from the identity request
//! (`identity.rs`), which is why it is the agent's and not a command the
//! host runs: a guest command costs ~80 ms under TCG, writing a file a few.
//!
//! What happens ([`plan`]), in a guest that has git:
//! - no `/root/.gitconfig`: write it ([`banger_proto::gitconfig`]);
//! - one that says exactly that already (a restart, a warm restore): nothing;
//! - one only banger wrote (a `[user]` name and email, nothing else): write
//!   it again with the new values;
//! - one the user made their own: `git config --global` sets each key in
//!   it, keeping the rest.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use banger_proto::gitconfig;

/// What applying an identity to a global git config takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// It is there already, or there is nothing to set.
    Nothing,
    /// The whole file, written anew.
    Write(String),
    /// `git config --global KEY VALUE` for each pair: the file is the user's.
    Edit,
}

/// The plan for a config that reads `existing` (`None`: there is none).
pub fn plan(existing: Option<&str>, identity: &[String]) -> Plan {
    if identity.is_empty() {
        return Plan::Nothing;
    }
    let want = gitconfig(identity);
    match existing {
        Some(text) if text == want => Plan::Nothing,
        Some(text) if !only_ours(text) => Plan::Edit,
        _ => Plan::Write(want),
    }
}

/// A file as [`gitconfig`] writes them: `[user]`, then quoted names and emails.
fn only_ours(text: &str) -> bool {
    let mut lines = text.lines();
    lines.next() == Some("[user]")
        && lines.all(|l| {
            (l.starts_with("\tname = \"") || l.starts_with("\temail = \"")) && l.ends_with('"')
        })
}

/// The guest's git, if it has one.
pub fn git_binary(root: &Path) -> Option<PathBuf> {
    crate::spawn::DEFAULT_PATH
        .split(':')
        .map(|dir| root.join(dir.trim_start_matches('/')).join("git"))
        .find(|p| p.is_file())
}

/// The `git config` command for one pair, run as root in `home`.
pub fn edit_command(git: &Path, home: &Path, key: &str, value: &str) -> Command {
    let mut cmd = Command::new(git);
    cmd.args(["config", "--global", key, value])
        .env_clear()
        .env("HOME", home)
        .env("PATH", crate::spawn::DEFAULT_PATH)
        .current_dir(home)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Runs `cmd` to its end through the process's reaper (the only waiter
/// for children) and returns its exit code; blocks.
pub fn run_blocking(mut cmd: Command) -> io::Result<i32> {
    let (_, _, exited) = crate::reaper::Reaper::global().spawn(|| {
        let child = cmd.spawn()?;
        Ok(((), child.id()))
    })?;
    exited
        .blocking_recv()
        .map(|status| status.code)
        .map_err(|_| io::Error::other("the child's exit was lost"))
}

/// What [`apply`] did, or left to do.
#[derive(Debug)]
pub enum Applied {
    /// Done: what was done.
    Done(&'static str),
    /// The user's own config: a `git config` to run per key ([`Applied::finish`]).
    Edits(Vec<(String, Command)>),
}

impl Applied {
    /// Runs what is left, blocking (the caller chooses the thread); says
    /// what was done.
    pub fn finish(self) -> io::Result<&'static str> {
        let edits = match self {
            Applied::Done(did) => return Ok(did),
            Applied::Edits(edits) => edits,
        };
        for (key, cmd) in edits {
            let code = run_blocking(cmd)?;
            if code != 0 {
                return Err(io::Error::other(format!(
                    "git config --global {key} exited with {code}"
                )));
            }
        }
        Ok("set in the user's own config")
    }
}

/// Applies `identity` to `home/.gitconfig` when the guest under `root`
/// has git: reads it and writes it when that is all it takes (the common
/// case, done here), otherwise returns the `git config` runs to make.
pub fn apply(root: &Path, home: &Path, identity: &[String]) -> io::Result<Applied> {
    if identity.is_empty() {
        return Ok(Applied::Done("none on the host"));
    }
    let Some(git) = git_binary(root) else {
        return Ok(Applied::Done("no git in this guest"));
    };
    let path = home.join(".gitconfig");
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    match plan(existing.as_deref(), identity) {
        Plan::Nothing => Ok(Applied::Done("already set")),
        Plan::Write(text) => {
            let tmp = home.join(".gitconfig.banger");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)?;
            Ok(Applied::Done("written"))
        }
        Plan::Edit => Ok(Applied::Edits(
            identity
                .chunks(2)
                .filter_map(|pair| match pair {
                    [key, value] => Some((key.clone(), edit_command(&git, home, key, value))),
                    _ => None,
                })
                .collect(),
        )),
    }
}

#[cfg(test)]
#[path = "git_tests.rs"]
mod tests;
