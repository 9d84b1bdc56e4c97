//! Reaching a VM's sshd: where to connect in its network mode, and waiting
//! until sshd answers. Probes go through the agent channel (so they work in
//! every mode) with backoff, since each probe makes sshd fork and aggressive
//! probing slows a TCG boot badly.
//!
//! Host keys are pinned: once sshd answers, the VM's Ed25519 host key is
//! read over the agent channel (which needs no host key to trust) and filed
//! in a known-hosts file of the VM's own under an alias naming the VM's id,
//! so `ssh` checks it strictly and one guest cannot pose as another, even
//! on a shared bridge address or a reused loopback port.

use super::Lifecycle;
use crate::error::Error;
use banger_api::NetworkMode;
use banger_api::SshTarget;
use banger_proto::{FrameKind, Request};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// The VM's pinned host key, in its state dir.
pub const KNOWN_HOSTS: &str = "known_hosts";

/// The name a VM's host key is filed under.
pub fn host_key_alias(vm_id: &str) -> String {
    format!("banger-{vm_id}")
}

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
                known_hosts: None,
                host_key_alias: None,
            },
            NetworkMode::User => match vm.publish.iter().find(|p| p.guest == 22) {
                Some(p) => SshTarget {
                    user: "root".into(),
                    host: "127.0.0.1".into(),
                    port: p.host,
                    key: String::new(),
                    proxy: false,
                    known_hosts: None,
                    host_key_alias: None,
                },
                None => SshTarget {
                    user: "root".into(),
                    host: name.into(),
                    port: 22,
                    key: String::new(),
                    proxy: true,
                    known_hosts: None,
                    host_key_alias: None,
                },
            },
            NetworkMode::None => SshTarget {
                user: "root".into(),
                host: name.into(),
                port: 22,
                key: String::new(),
                proxy: true,
                known_hosts: None,
                host_key_alias: None,
            },
        };
        if wait {
            self.wait_for_sshd(name, Duration::from_secs(60)).await?;
            self.pin_host_key(&vm).await?;
        }
        let known = self.dir(&vm).file(KNOWN_HOSTS);
        Ok(SshTarget {
            key: key.display().to_string(),
            known_hosts: Some(known.display().to_string()),
            host_key_alias: Some(host_key_alias(&vm.id)),
            ..target
        })
    }

    /// Files the guest's host key under the VM's alias, once.
    async fn pin_host_key(&self, vm: &crate::store::VmRecord) -> Result<(), Error> {
        let known = self.dir(vm).file(KNOWN_HOSTS);
        if known.exists() {
            return Ok(());
        }
        let agent = self.agent(&vm.name).await?;
        let out = agent
            .run(
                &["cat", "/etc/ssh/ssh_host_ed25519_key.pub"],
                None,
                &[],
                4096,
            )
            .await?;
        let line = String::from_utf8_lossy(&out.stdout);
        let mut parts = line.split_whitespace();
        let (Some(kind @ "ssh-ed25519"), Some(key)) = (parts.next(), parts.next()) else {
            return Err(Error::Guest(format!(
                "the guest's ssh host key is unreadable ({}): is sshd installed?",
                out.stderr_tail()
            )));
        };
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        {
            return Err(Error::Guest("the guest's ssh host key is malformed".into()));
        }
        let entry = format!("{} {kind} {key}\n", host_key_alias(&vm.id));
        let tmp = self.dir(vm).file(".known_hosts.tmp");
        std::fs::write(&tmp, entry)
            .and_then(|()| std::fs::rename(&tmp, &known))
            .map_err(Error::io(format!("cannot write {}", known.display())))
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
