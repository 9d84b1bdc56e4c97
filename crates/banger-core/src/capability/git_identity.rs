//! Git identity: the host user's global `user.name` and `user.email` (as
//! `git config --global` reports them for the daemon's user) go into the
//! guest's `/root/.gitconfig` at every boot, so commits made in a plain VM
//! shell carry the user's name. A repo-level identity is not touched here:
//! it travels inside the checkout's own `.git/config` with `workspace
//! prepare`, so repo overrides keep working in the guest as on the host.
//! Guests without git (the minimal image) are left alone.

use super::{Capability, Ctx};
use crate::agent::AgentConn;
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

    /// The host's global value of `key`, if set.
    fn global(&self, key: &str) -> Option<String> {
        let cmd = Cmd::new("git")
            .args(["config", "--global", "--get", key])
            .env("HOME", &self.home);
        let out = self.runner.run(&cmd).ok()?;
        let v = out.stdout_lossy().trim().to_string();
        (!v.is_empty()).then_some(v)
    }
}

impl GitIdentity {
    /// `user.name VALUE user.email VALUE`, for the keys the host sets.
    fn identity(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        for key in ["user.name", "user.email"] {
            if let Some(v) = self.global(key) {
                args.extend([key.to_string(), v]);
            }
        }
        args
    }
}

/// Sets each given key in the guest's global git config; exits 0 without
/// git. Values arrive as arguments, never through the shell's parser.
/// `$1` is the whole file ([`gitconfig`]), written as it is when the guest
/// has none yet (a first boot: one shell builtin instead of a `git config`
/// per key, ~75 ms each under TCG); otherwise git edits the file it has.
const SET_SCRIPT: &str = r#"command -v git >/dev/null 2>&1 || exit 0
if [ ! -e /root/.gitconfig ]; then printf '%s' "$1" > /root/.gitconfig; exit; fi
shift
while [ "$#" -ge 2 ]; do git config --global "$1" "$2" || exit 1; shift 2; done"#;

/// A git config file setting `args` (`user.name VALUE …`), each value
/// quoted and escaped as git reads it back.
pub fn gitconfig(args: &[String]) -> String {
    let mut text = String::from("[user]\n");
    for pair in args.chunks(2) {
        let [key, value] = pair else { continue };
        let name = key.strip_prefix("user.").unwrap_or(key);
        let mut quoted = String::new();
        for c in value.chars() {
            match c {
                '\\' => quoted.push_str("\\\\"),
                '"' => quoted.push_str("\\\""),
                '\n' => quoted.push_str("\\n"),
                '\t' => quoted.push_str("\\t"),
                c if c.is_control() => {}
                c => quoted.push(c),
            }
        }
        text.push_str(&format!("\t{name} = \"{quoted}\"\n"));
    }
    text
}

impl Capability for GitIdentity {
    fn name(&self) -> &'static str {
        "git-identity"
    }

    fn ready_key(&self, _ctx: &Ctx<'_>) -> Option<String> {
        Some(self.identity().join("\n"))
    }

    fn ready<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        agent: &'a AgentConn,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let args = self.identity();
            if args.is_empty() {
                tracing::debug!(vm = %ctx.vm.name, "no global git identity on the host");
                return Ok(());
            }
            let file = gitconfig(&args);
            let mut argv = vec!["sh", "-c", SET_SCRIPT, "sh", file.as_str()];
            argv.extend(args.iter().map(String::as_str));
            let out = agent.run(&argv, Some("/root"), &[], 64 << 10).await?;
            if out.code != 0 {
                return Err(Error::Guest(format!(
                    "cannot set the git identity in the guest: {}",
                    out.stderr_tail()
                )));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_reads_back_exactly_the_values_the_file_was_written_with() {
        if banger_sys::command::which("git").is_none() {
            banger_sys::skip_test("the gitconfig round trip needs git");
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let name = r#"Ann "the \ tester" O'Neil; # not a comment"#;
        let email = "  ann@example.com\t";
        let args = ["user.name", name, "user.email", email].map(String::from);
        std::fs::write(home.path().join(".gitconfig"), gitconfig(&args)).unwrap();
        for (key, want) in [("user.name", name), ("user.email", email)] {
            let out = std::process::Command::new("git")
                .args(["config", "--global", "--get", key])
                .env("HOME", home.path())
                .env_remove("XDG_CONFIG_HOME")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{want}\n"));
        }
    }
}
