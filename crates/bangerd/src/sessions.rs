//! `/v1/vms/{name}/sessions…`: guest sessions through the core's sessions
//! service. Attach is an upgrade spliced to the agent's stream (the client
//! speaks agent frames); logs is a plain streamed body of output bytes.

use crate::api::{AppState, HttpError, body};
use crate::exec::splice_upgrade;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use banger_api::{Session, StartSession};
use futures::StreamExt;

pub async fn list(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Session>>, HttpError> {
    Ok(Json(s.sessions.list(&name).await?))
}

pub async fn start(
    State(s): State<AppState>,
    Path(name): Path<String>,
    req: Result<Json<StartSession>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, HttpError> {
    let req = body("session", req)?;
    let session = s.sessions.start(&name, req).await?;
    Ok((StatusCode::CREATED, Json(session)).into_response())
}

pub async fn stop(
    State(s): State<AppState>,
    Path((name, session)): Path<(String, String)>,
) -> Result<Json<Session>, HttpError> {
    Ok(Json(s.sessions.stop(&name, &session).await?))
}

pub async fn attach(
    State(s): State<AppState>,
    Path((name, session)): Path<(String, String)>,
    mut req: Request,
) -> Result<Response, HttpError> {
    let stream = s.sessions.attach(&name, &session).await?;
    Ok(splice_upgrade(
        &mut req,
        (stream, None),
        name,
        banger_api::ATTACH_UPGRADE,
    ))
}

pub async fn logs(
    State(s): State<AppState>,
    Path((name, session)): Path<(String, String)>,
    q: crate::api::LogsQuery,
) -> Result<Response, HttpError> {
    output(&s, &name, &session, q.follow, "application/octet-stream").await
}

/// A session's output so far (and live, when following) as a streamed body
/// of `content_type`: the API's bytes, the web page's text.
pub async fn output(
    s: &AppState,
    name: &str,
    session: &str,
    follow: bool,
    content_type: &'static str,
) -> Result<Response, HttpError> {
    let chunks = s.sessions.logs(name, session, follow).await?;
    let body = Body::from_stream(chunks.map(Ok::<_, std::convert::Infallible>));
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}
