//! Git identity: the host user's global `user.name` and `user.email` (as
//! `git config --global` reports them for the daemon's user) go into the
//! guest's `/root/.gitconfig` at every boot, so commits made in a plain VM
//! shell carry the user's name. The values travel in the guest config
//! (`prepare`); the agent writes them at boot, and after a restore from the
//! identity request the `identity` capability builds from that config
//! (`banger-agent`'s `git.rs` says how; a guest without git is left
//! alone). A repo-level identity is not touched here: it travels inside
//! the checkout's own `.git/config` with `workspace prepare`, so repo
//! overrides keep working in the guest as on the host.

use super::{BootPlan, Capability, Ctx};
use crate::error::Error;
use banger_sys::command::{Cmd, Runner};
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;

pub struct GitIdentity {
    runner: Arc<dyn Runner>,
    home: PathBuf,
}

impl GitIdentity {
    pub fn new(runner: Arc<dyn Runner>, home: PathBuf) -> GitIdentity {
        GitIdentity { runner, home }
    }

    /// `user.name VALUE user.email VALUE`, for the keys the host sets: one
    /// `git config` for both (each run is ~7 ms of a warm `vm run`).
    fn identity(&self) -> Vec<String> {
        let cmd = Cmd::new("git")
            .args([
                "config",
                "--global",
                "-z",
                "--get-regexp",
                r"^user\.(name|email)$",
            ])
            .env("HOME", &self.home);
        // git exits 1 when neither is set.
        match self.runner.run(&cmd) {
            Ok(out) => parse_identity(&out.stdout_lossy()),
            Err(_) => Vec::new(),
        }
    }
}

/// Longest value passed on: the guest config has room for far more, but
/// no name or address is this long.
pub const MAX_VALUE: usize = 1024;

/// `git config -z --get-regexp` output (`key\nvalue\0` per entry) as
/// `user.name VALUE user.email VALUE`: the last value of each key wins, as
/// with `git config --get`; empty values, and longer than [`MAX_VALUE`],
/// count as unset.
pub fn parse_identity(z: &str) -> Vec<String> {
    let keys = ["user.name", "user.email"];
    let mut last: [Option<&str>; 2] = [None, None];
    for entry in z.split('\0') {
        let Some((key, value)) = entry.split_once('\n') else {
            continue;
        };
        if let Some(i) = keys.iter().position(|k| *k == key) {
            let value = value.trim();
            last[i] = (!value.is_empty() && value.len() <= MAX_VALUE).then_some(value);
        }
    }
    keys.iter()
        .zip(last)
        .filter_map(|(k, v)| Some([k.to_string(), v?.to_string()]))
        .flatten()
        .collect()
}

impl Capability for GitIdentity {
    fn name(&self) -> &'static str {
        "git-identity"
    }

    fn prepare<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        plan: &'a mut BootPlan,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            plan.guest.git_identity = self.identity();
            Ok(())
        })
    }

    fn rename<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        _old: &'a str,
        guest: &'a mut banger_proto::GuestConfig,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            guest.git_identity = self.identity();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_identity_is_read_in_one_git_run() {
        if banger_sys::command::which("git").is_none() {
            banger_sys::skip_test("reading the identity needs git");
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let id = GitIdentity::new(
            Arc::new(banger_sys::command::SystemRunner),
            home.path().into(),
        );
        if std::env::var_os("XDG_CONFIG_HOME").is_none() {
            assert!(id.identity().is_empty(), "nothing set");
        }
        let config = "[user]\n\tname = First\n\temail = a@b.c\n[user]\n\tname = \"Ann\\nO'Neil\"\n";
        std::fs::write(home.path().join(".gitconfig"), config).unwrap();
        assert_eq!(
            id.identity(),
            ["user.name", "Ann\nO'Neil", "user.email", "a@b.c"],
            "the last name wins, a newline in it stays"
        );
    }

    #[test]
    fn identity_output_is_parsed_by_key() {
        assert_eq!(
            parse_identity("user.email\nx@y\0user.name\n  \0user.signingkey\nK\0user.name\0"),
            ["user.email", "x@y"]
        );
        assert!(parse_identity("").is_empty());
        let long = format!("user.name\n{}\0", "x".repeat(MAX_VALUE + 1));
        assert!(parse_identity(&long).is_empty(), "too long to be a name");
    }
}
