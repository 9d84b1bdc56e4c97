//! Reaching a VM's sshd: where to connect in its network mode, and waiting
//! until sshd answers. Probes go through the agent channel (so they work in
//! every mode) with backoff, since each probe makes sshd fork and aggressive
//! probing slows a TCG boot badly.

use super::Lifecycle;
use crate::error::Error;
use banger_api::NetworkMode;
use banger_api::SshTarget;
use banger_proto::{FrameKind, Request};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

impl Lifecycle {
    /// Where `vm ssh` connects for `name`; with `wait`, only once sshd answers.
    pub async fn ssh_target(&self, name: &str, wait: bool) -> Result<SshTarget, Error> {
        let vm = self.record(name)?;
        let (key, _) = crate::ssh::ensure_key(
            &*self.runner,
            &self.paths.state_dir,
            self.config.ssh_key.as_deref(),
        )?;
        let target = match vm.network {
            NetworkMode::Bridge => SshTarget {
                user: "root".into(),
                host: vm.ip.clone().unwrap_or_default(),
                port: 22,
                key: String::new(),
                proxy: false,
            },
            NetworkMode::User => match vm.publish.iter().find(|p| p.guest == 22) {
                Some(p) => SshTarget {
                    user: "root".into(),
                    host: "127.0.0.1".into(),
                    port: p.host,
                    key: String::new(),
                    proxy: false,
                },
                None => SshTarget {
                    user: "root".into(),
                    host: name.into(),
                    port: 22,
                    key: String::new(),
                    proxy: true,
                },
            },
            NetworkMode::None => SshTarget {
                user: "root".into(),
                host: name.into(),
                port: 22,
                key: String::new(),
                proxy: true,
            },
        };
        if wait {
            self.wait_for_sshd(name, Duration::from_secs(60)).await?;
        }
        Ok(SshTarget {
            key: key.display().to_string(),
            ..target
        })
    }

    /// Waits until sshd in the guest sends its banner.
    pub async fn wait_for_sshd(&self, name: &str, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(100);
        let mut last: String;
        loop {
            match self.probe_sshd(name).await {
                Ok(()) => return Ok(()),
                Err(e @ Error::WrongState { .. }) | Err(e @ Error::VmNotFound { .. }) => {
                    return Err(e);
                }
                Err(e) => last = crate::error::chain(&e),
            }
            if Instant::now() + delay > deadline {
                return Err(Error::SshTimeout {
                    name: name.into(),
                    secs: timeout.as_secs(),
                    last,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn probe_sshd(&self, name: &str) -> Result<(), Error> {
        let agent = self.agent(name).await?;
        let mut s = agent.request(Request::Connect { port: 22 }).await?;
        let frame = banger_proto::read_frame(&mut s)
            .await
            .map_err(crate::agent::AgentError::from)?;
        match frame {
            Some(f) if f.kind == FrameKind::Response => {}
            Some(f) if f.kind == FrameKind::Error => {
                let e: banger_proto::ErrorBody =
                    f.parse().map_err(crate::agent::AgentError::from)?;
                return Err(Error::Guest(e.message));
            }
            _ => return Err(Error::Guest("the agent closed the probe".into())),
        }
        let mut banner = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut banner))
            .await
            .map_err(|_| Error::Guest("sshd sent no banner".into()))?
            .map_err(|e| Error::Guest(format!("sshd closed the connection: {e}")))?;
        if &banner != b"SSH-" {
            return Err(Error::Guest("port 22 in the guest is not sshd".into()));
        }
        Ok(())
    }
}
