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
const SET_SCRIPT: &str = r#"command -v git >/dev/null 2>&1 || exit 0
while [ "$#" -ge 2 ]; do git config --global "$1" "$2" || exit 1; shift 2; done"#;

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
            let mut argv = vec!["sh", "-c", SET_SCRIPT, "sh"];
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
