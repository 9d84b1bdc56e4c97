//! SSH keys: the public half of banger's key pair (made on first use, or
//! the configured `ssh_key`) goes into the guest's authorized keys at every
//! boot; nothing is baked into images.

use super::{BootPlan, Capability, Ctx};
use crate::error::Error;
use banger_sys::command::Runner;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;

pub struct SshKeys {
    runner: Arc<dyn Runner>,
    state_dir: PathBuf,
    configured: Option<PathBuf>,
}

impl SshKeys {
    pub fn new(
        runner: Arc<dyn Runner>,
        state_dir: PathBuf,
        configured: Option<PathBuf>,
    ) -> SshKeys {
        SshKeys {
            runner,
            state_dir,
            configured,
        }
    }
}

impl Capability for SshKeys {
    fn name(&self) -> &'static str {
        "ssh-keys"
    }

    fn prepare<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        plan: &'a mut BootPlan,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let (_, public) =
                crate::ssh::ensure_key(&*self.runner, &self.state_dir, self.configured.as_deref())?;
            plan.guest.authorized_keys.push(public);
            Ok(())
        })
    }
}
