//! `POST /v1/vms/{name}/exec`: an HTTP upgrade to a raw stream, as
//! `docker attach` does. The daemon opens an agent stream, sends the exec
//! request from the `x-banger-exec` header as its first frame, answers 101,
//! and from then on only copies bytes both ways: the CLI and the agent speak
//! `banger_proto` frames to each other. When the CLI goes away the agent
//! stream closes and the agent kills the process.

use crate::api::{AppState, HttpError, error};
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use banger_api::ErrorCode;
use banger_proto::{ExecRequest, Request as AgentRequest};
use hyper_util::rt::TokioIo;

pub async fn exec(
    State(s): State<AppState>,
    Path(name): Path<String>,
    mut req: Request,
) -> Result<Response, HttpError> {
    let raw = req.headers().get(banger_api::EXEC_HEADER).ok_or_else(|| {
        error(
            ErrorCode::Invalid,
            format!("exec needs the {} header", banger_api::EXEC_HEADER),
        )
    })?;
    let exec: ExecRequest = serde_json::from_slice(raw.as_bytes())
        .map_err(|e| error(ErrorCode::Invalid, format!("bad exec request: {e}")))?;
    if exec.argv.is_empty() {
        return Err(error(
            ErrorCode::Invalid,
            "exec needs a command: banger vm exec NAME -- CMD...",
        ));
    }
    let (stream, first) = s.vms.agent_request(&name, AgentRequest::Exec(exec)).await?;
    Ok(splice_upgrade(
        &mut req,
        (stream, Some(first)),
        name,
        banger_api::EXEC_UPGRADE,
    ))
}

/// Answers 101 and, once the client's side of the upgrade is ready, passes
/// on the agent's first frame if the daemon read it already, then copies
/// bytes both ways between the client and the agent stream until either
/// ends.
pub fn splice_upgrade(
    req: &mut Request,
    (mut stream, first): (banger_core::agent::AgentStream, Option<banger_proto::Frame>),
    vm: String,
    protocol: &'static str,
) -> Response {
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut io = TokioIo::new(upgraded);
                if let Some(frame) = first
                    && let Err(e) = banger_proto::write_frame(&mut io, &frame).await
                {
                    tracing::debug!(%vm, error = %e, "upgraded stream ended");
                    return;
                }
                if let Err(e) = tokio::io::copy_bidirectional(&mut io, &mut stream).await {
                    tracing::debug!(%vm, error = %e, "upgraded stream ended");
                }
            }
            Err(e) => tracing::warn!(%vm, error = %e, "upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::CONNECTION, "upgrade"), (header::UPGRADE, protocol)],
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct PathQuery {
    pub path: String,
}

/// `POST /v1/vms/{name}/files/unpack?path=P`: an agent `unpack` of P; the
/// client sends the archive as frames and reads the answer.
pub async fn unpack(
    s: State<AppState>,
    name: Path<String>,
    q: axum::extract::Query<PathQuery>,
    req: Request,
) -> Result<Response, HttpError> {
    let dest = q.0.path;
    files(
        s,
        name,
        AgentRequest::Unpack(banger_proto::UnpackRequest { dest }),
        req,
    )
    .await
}

/// `POST /v1/vms/{name}/files/pack?path=P`: an agent `pack` of P; the
/// client reads the archive as frames, then the answer.
pub async fn pack(
    s: State<AppState>,
    name: Path<String>,
    q: axum::extract::Query<PathQuery>,
    req: Request,
) -> Result<Response, HttpError> {
    let path = q.0.path;
    files(
        s,
        name,
        AgentRequest::Pack(banger_proto::PackRequest { path }),
        req,
    )
    .await
}

/// Sends an archive request to the agent and splices the client to it.
async fn files(
    State(s): State<AppState>,
    Path(name): Path<String>,
    request: AgentRequest,
    mut req: Request,
) -> Result<Response, HttpError> {
    let agent = s.vms.agent(&name).await?;
    let stream = agent
        .request(request)
        .await
        .map_err(banger_core::Error::from)?;
    Ok(splice_upgrade(
        &mut req,
        (stream, None),
        name,
        banger_api::FILES_UPGRADE,
    ))
}

#[derive(serde::Deserialize)]
pub struct PortQuery {
    pub port: u16,
}

/// `POST /v1/vms/{name}/connect?port=N`: the same upgrade, carrying a raw
/// TCP connection to guest port N (the agent's `Connect`), for `vm proxy`.
pub async fn connect(
    State(s): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<PortQuery>,
    mut req: Request,
) -> Result<Response, HttpError> {
    let (stream, first) = s
        .vms
        .agent_request(&name, AgentRequest::Connect { port: q.port })
        .await?;
    if first.kind == banger_proto::FrameKind::Error {
        let e: banger_proto::ErrorBody = first
            .parse()
            .map_err(|e| error(ErrorCode::Engine, e.to_string()))?;
        return Err(error(ErrorCode::Engine, e.message));
    }
    Ok(splice_upgrade(
        &mut req,
        (stream, None),
        name,
        banger_api::CONNECT_UPGRADE,
    ))
}
