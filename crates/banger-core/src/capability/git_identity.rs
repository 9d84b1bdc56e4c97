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

/// `git config -z --get-regexp` output (`key\nvalue\0` per entry) as
/// `user.name VALUE user.email VALUE`: the last value of each key wins, as
/// with `git config --get`; empty values count as unset.
pub fn parse_identity(z: &str) -> Vec<String> {
    let keys = ["user.name", "user.email"];
    let mut last: [Option<&str>; 2] = [None, None];
    for entry in z.split('\0') {
        let Some((key, value)) = entry.split_once('\n') else {
            continue;
        };
        if let Some(i) = keys.iter().position(|k| *k == key) {
            let value = value.trim();
            last[i] = (!value.is_empty()).then_some(value);
        }
    }
    keys.iter()
        .zip(last)
        .filter_map(|(k, v)| Some([k.to_string(), v?.to_string()]))
        .flatten()
        .collect()
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
    }

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
