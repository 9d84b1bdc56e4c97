//! Identity: a VM restored from a snapshot (`vm restore`, `vm create
//! --from-snapshot`, `vm fork`) is a new machine to the network and to
//! cryptography. The host side is already its own (its name, MAC, lease,
//! tap and DNS name come from the other capabilities' `prepare`), but the
//! guest resumes with the snapshot's hostname, MAC, address, clock, RNG
//! state and sshd host key. Right after its agent answers, this sends the
//! agent an identity request built from this boot's guest config (what a
//! cold boot would have read from the config drive), 64 bytes from the
//! host's RNG and the host's time; the agent applies it (`banger-agent`'s
//! `identity.rs` says how) or the restore fails. The VM's pinned sshd
//! host key (`vm/ssh.rs`) is forgotten first: the guest makes a new one,
//! pinned again over the agent channel by the next `vm ssh`.
//!
//! An agent too old to know the request (a snapshot taken before it
//! existed) leaves the guest as it was, with a warning in the log.

use super::{Capability, Ctx};
use crate::agent::{AgentConn, AgentError};
use crate::error::Error;
use banger_proto::{GuestConfig, IdentityRequest, WallTime};
use futures::future::BoxFuture;
use rand::RngCore;
use std::time::{SystemTime, UNIX_EPOCH};

/// Random bytes sent for the guest's reseed.
pub const ENTROPY_BYTES: usize = 64;

pub struct Identity;

/// The request for a guest given `guest` at this boot, with `entropy` and
/// the host's time `now`.
pub fn request(guest: &GuestConfig, entropy: Vec<u8>, now: SystemTime) -> IdentityRequest {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    IdentityRequest {
        vm_name: guest.vm_name.clone(),
        hostname: if guest.hostname.is_empty() {
            guest.vm_name.clone()
        } else {
            guest.hostname.clone()
        },
        network: guest.network.clone(),
        entropy,
        time: WallTime {
            secs: since.as_secs() as i64,
            nanos: since.subsec_nanos(),
        },
    }
}

impl Capability for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn restored<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        guest: &'a GuestConfig,
        agent: &'a AgentConn,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let known = ctx.dir.file(crate::vm::ssh::KNOWN_HOSTS);
            match std::fs::remove_file(&known) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("cannot remove {}", known.display()))(e));
                }
                _ => {}
            }
            let mut entropy = vec![0u8; ENTROPY_BYTES];
            rand::rngs::OsRng.fill_bytes(&mut entropy);
            match agent
                .identity(request(guest, entropy, SystemTime::now()))
                .await
            {
                Ok(report) => {
                    // The guest's words: logged, never acted on.
                    tracing::info!(
                        vm = %ctx.vm.name,
                        clock_step_ms = report.clock_step_ms,
                        ssh_host_key = report.ssh_host_key,
                        warnings = ?report.warnings,
                        "guest took its identity"
                    );
                    Ok(())
                }
                Err(AgentError::Remote { code, message }) if code == "bad_request" => {
                    tracing::warn!(
                        vm = %ctx.vm.name,
                        agent = %message,
                        "the guest's agent predates identity requests: it keeps the snapshot's hostname, addresses, clock and RNG state"
                    );
                    Ok(())
                }
                Err(e) => Err(Error::Guest(format!(
                    "cannot give the restored guest its identity: {}",
                    crate::error::chain(&e)
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::GuestNetwork;
    use std::time::Duration;

    #[test]
    fn the_request_carries_this_boots_name_network_and_the_hosts_time() {
        let guest = GuestConfig {
            version: 1,
            vm_name: "try-2".into(),
            hostname: "try-2".into(),
            authorized_keys: vec!["ssh-ed25519 AAAA".into()],
            network: Some(GuestNetwork {
                mac: "52:54:00:00:00:02".into(),
                address: "172.30.0.12/24".into(),
                ..Default::default()
            }),
        };
        let now = UNIX_EPOCH + Duration::new(1_800_000_000, 250);
        let req = request(&guest, vec![9; ENTROPY_BYTES], now);
        assert_eq!(req.hostname, "try-2");
        assert_eq!(req.network, guest.network);
        assert_eq!(
            req.time,
            WallTime {
                secs: 1_800_000_000,
                nanos: 250
            }
        );
        assert_eq!(req.entropy.len(), ENTROPY_BYTES);
    }

    #[test]
    fn a_config_without_a_hostname_names_the_guest_after_the_vm() {
        let guest = GuestConfig {
            vm_name: "web".into(),
            ..Default::default()
        };
        assert_eq!(request(&guest, vec![], UNIX_EPOCH).hostname, "web");
    }
}
