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
use banger_proto::{ExecRequest, Request as AgentRequest};
use hyper_util::rt::TokioIo;

pub async fn exec(
    State(s): State<AppState>,
    Path(name): Path<String>,
    mut req: Request,
) -> Result<Response, HttpError> {
    let raw = req.headers().get(banger_api::EXEC_HEADER).ok_or_else(|| {
        error(
            "invalid",
            format!("exec needs the {} header", banger_api::EXEC_HEADER),
        )
    })?;
    let exec: ExecRequest = serde_json::from_slice(raw.as_bytes())
        .map_err(|e| error("invalid", format!("bad exec request: {e}")))?;
    if exec.argv.is_empty() {
        return Err(error(
            "invalid",
            "exec needs a command: banger vm exec NAME -- CMD...",
        ));
    }
    let agent = s.manager.agent(&name).await?;
    let mut stream = agent
        .request(AgentRequest::Exec(exec))
        .await
        .map_err(banger_core::Error::from)?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut io = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut io, &mut stream).await {
                    tracing::debug!(vm = %name, error = %e, "exec stream ended");
                }
            }
            Err(e) => tracing::warn!(vm = %name, error = %e, "exec upgrade failed"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, banger_api::EXEC_UPGRADE),
        ],
    )
        .into_response())
}
