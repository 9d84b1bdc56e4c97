//! The sessions service: long-lived guest commands. The agent keeps them
//! (they outlive client disconnects and daemon restarts); the daemon
//! records each one it started with the boot it belongs to, so after a vm
//! restart — when the agent has forgotten them — they are listed as
//! `ended`, not lost silently.

use crate::agent::{AgentConn, AgentError, AgentStream};
use crate::error::Error;
use crate::store::{SessionRecord, Store};
use crate::vm::Lifecycle;
use banger_api::{Session, SessionState, StartSession};
use banger_proto::session::{SessionInfo, SessionRequest, valid_name};
use banger_proto::{FrameKind, Request};
use std::sync::Arc;

pub struct Sessions {
    vms: Arc<Lifecycle>,
    store: Arc<Store>,
}

fn view(info: SessionInfo) -> Session {
    Session {
        name: info.name,
        argv: info.argv,
        cwd: info.cwd,
        state: match info.state {
            banger_proto::SessionState::Running => SessionState::Running,
            banger_proto::SessionState::Exited => SessionState::Exited,
            banger_proto::SessionState::Failed => SessionState::Failed,
        },
        exit_code: info.exit_code,
        signal: info.signal,
        pid: info.pid,
        started_at: info.started_at,
        ended_at: info.ended_at,
        error: info.error,
        output_bytes: info.output_bytes,
    }
}

/// Reads the one answer frame of a session request.
async fn answer<T: for<'de> serde::Deserialize<'de>>(
    s: &mut AgentStream,
    name: &str,
) -> Result<T, Error> {
    let frame = banger_proto::read_frame(s)
        .await
        .map_err(AgentError::from)?
        .ok_or(AgentError::Closed)?;
    match frame.kind {
        FrameKind::Response => Ok(frame.parse().map_err(AgentError::from)?),
        FrameKind::Error => {
            let e: banger_proto::ErrorBody = frame.parse().map_err(AgentError::from)?;
            Err(match e.code.as_str() {
                "not_found" => Error::SessionNotFound { name: name.into() },
                "preflight_failed" | "bad_request" => {
                    Error::invalid(format!("session {name:?}:"), e.message)
                }
                _ => AgentError::Remote {
                    code: e.code,
                    message: e.message,
                }
                .into(),
            })
        }
        other => Err(AgentError::Unexpected(other).into()),
    }
}

impl Sessions {
    pub fn new(vms: Arc<Lifecycle>, store: Arc<Store>) -> Sessions {
        Sessions { vms, store }
    }

    fn vm_id(&self, vm: &str) -> Result<String, Error> {
        self.store
            .vm(vm)?
            .map(|v| v.id)
            .ok_or_else(|| Error::VmNotFound { name: vm.into() })
    }

    async fn request(
        &self,
        vm: &str,
        req: SessionRequest,
    ) -> Result<(Arc<AgentConn>, AgentStream), Error> {
        let agent = self.vms.agent(vm).await?;
        let s = agent.request(Request::Session(req)).await?;
        Ok((agent, s))
    }

    pub async fn start(&self, vm: &str, req: StartSession) -> Result<Session, Error> {
        let vm_id = self.vm_id(vm)?;
        if !valid_name(&req.name) {
            return Err(Error::invalid(
                "--name",
                format!(
                    "{:?} must be 1-63 characters of a-z, 0-9, '.', '_' and '-'",
                    req.name
                ),
            ));
        }
        if req.argv.is_empty() {
            return Err(Error::invalid(
                "command",
                "is missing: banger vm session start VM --name N -- CMD...",
            ));
        }
        let boot = self.vms.boot_id(vm).unwrap_or_default();
        let (_agent, mut s) = self
            .request(
                vm,
                SessionRequest::Start {
                    name: req.name.clone(),
                    argv: req.argv.clone(),
                    cwd: req.cwd.clone(),
                    env: req.env.clone(),
                },
            )
            .await?;
        let result = answer::<SessionInfo>(&mut s, &req.name).await;
        // Recorded even when the preflight refused it: list shows why.
        self.store.save_session(&SessionRecord {
            vm_id,
            name: req.name.clone(),
            argv: req.argv.clone(),
            cwd: req.cwd.clone().unwrap_or_else(|| "/root".into()),
            started_at: banger_sys::clock::unix_now(),
            boot,
        })?;
        Ok(view(result?))
    }

    /// Every session this vm had: the agent's, and the recorded ones it no
    /// longer knows (ended with an earlier boot).
    pub async fn list(&self, vm: &str) -> Result<Vec<Session>, Error> {
        let vm_id = self.vm_id(vm)?;
        let recorded = self.store.sessions(&vm_id)?;
        let live: Vec<SessionInfo> = match self.vms.boot_id(vm) {
            Some(_) => {
                let (_agent, mut s) = self.request(vm, SessionRequest::List).await?;
                answer(&mut s, "").await?
            }
            None => Vec::new(),
        };
        let mut out: Vec<Session> = live.into_iter().map(view).collect();
        for r in recorded {
            if out.iter().any(|s| s.name == r.name) {
                continue;
            }
            out.push(Session {
                name: r.name,
                argv: r.argv,
                cwd: r.cwd,
                state: SessionState::Ended,
                exit_code: None,
                signal: None,
                pid: None,
                started_at: r.started_at,
                ended_at: None,
                error: Some("the vm stopped while it ran".into()),
                output_bytes: 0,
            });
        }
        out.sort_by(|a, b| (a.started_at, &a.name).cmp(&(b.started_at, &b.name)));
        Ok(out)
    }

    pub async fn stop(&self, vm: &str, name: &str) -> Result<Session, Error> {
        let (_agent, mut s) = self
            .request(
                vm,
                SessionRequest::Stop {
                    name: name.into(),
                    grace_secs: None,
                },
            )
            .await?;
        Ok(view(answer(&mut s, name).await?))
    }

    /// An attach stream (the caller splices it to its client, who speaks
    /// agent frames from here on).
    pub async fn attach(&self, vm: &str, name: &str) -> Result<AgentStream, Error> {
        let (_agent, s) = self
            .request(
                vm,
                SessionRequest::Attach {
                    name: name.into(),
                    from: None,
                },
            )
            .await?;
        Ok(s)
    }

    /// The session's output (scrollback, then live with `follow`) as a
    /// stream of byte chunks; it ends with the session or the scrollback.
    pub async fn logs(
        &self,
        vm: &str,
        name: &str,
        follow: bool,
    ) -> Result<impl futures::Stream<Item = Vec<u8>> + Send + use<>, Error> {
        let (agent, mut s) = self
            .request(
                vm,
                SessionRequest::Logs {
                    name: name.into(),
                    follow,
                    from: None,
                },
            )
            .await?;
        let _info: SessionInfo = answer(&mut s, name).await?;
        Ok(futures::stream::unfold(
            (agent, s),
            |(agent, mut s)| async move {
                loop {
                    match banger_proto::read_frame(&mut s).await {
                        Ok(Some(f))
                            if f.kind == FrameKind::Stdout || f.kind == FrameKind::Stderr =>
                        {
                            return Some((f.payload, (agent, s)));
                        }
                        Ok(Some(f)) if f.kind == FrameKind::Exit => return None,
                        Ok(Some(_)) => continue,
                        _ => return None,
                    }
                }
            },
        ))
    }
}
