//! The `/v1` HTTP API (routes are listed in `banger_api`'s module doc):
//! thin handlers that call the core [`Manager`] and map its errors to
//! [`ApiError`] bodies with a status per error code.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_api::{ApiError, BuildImage, CreateVm, DaemonStatus, OperationRef, RegisterImage};
use banger_core::Manager;
use banger_core::ops::Op;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<Manager>,
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/daemon", get(daemon_status))
        .route("/v1/daemon/shutdown", post(daemon_shutdown))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{name}", get(show_vm).delete(delete_vm))
        .route("/v1/vms/{name}/start", post(start_vm))
        .route("/v1/vms/{name}/stop", post(stop_vm))
        .route("/v1/vms/{name}/restart", post(restart_vm))
        .route("/v1/vms/{name}/logs", get(crate::streams::vm_logs))
        .route("/v1/vms/{name}/exec", post(crate::exec::exec))
        .route("/v1/vms/{name}/connect", post(crate::exec::connect))
        .route("/v1/vms/{name}/ssh", get(ssh_target))
        .route("/v1/images", get(list_images))
        .route("/v1/images/build", post(build_image))
        .route("/v1/images/register", post(register_image))
        .route("/v1/images/{name}", get(show_image).delete(delete_image))
        .route("/v1/operations/{id}", get(show_operation))
        .route(
            "/v1/operations/{id}/events",
            get(crate::streams::operation_events),
        )
        .route("/v1/doctor", get(doctor))
        .with_state(state)
}

/// An API error response.
pub struct HttpError(pub ApiError);

impl From<banger_core::Error> for HttpError {
    fn from(e: banger_core::Error) -> Self {
        HttpError(e.to_api())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match self.0.code.as_str() {
            "not_found" => StatusCode::NOT_FOUND,
            "invalid" => StatusCode::BAD_REQUEST,
            "conflict" => StatusCode::CONFLICT,
            "engine" => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(self.0)).into_response()
    }
}

pub fn error(code: &str, message: impl Into<String>) -> HttpError {
    HttpError(ApiError {
        code: code.into(),
        message: message.into(),
    })
}

type ApiResult<T> = Result<T, HttpError>;

fn accepted(op: Arc<Op>) -> Response {
    (StatusCode::ACCEPTED, Json(OperationRef { id: op.id() })).into_response()
}

async fn daemon_status(State(s): State<AppState>) -> Json<DaemonStatus> {
    let m = &s.manager;
    Json(DaemonStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        socket: m.paths.socket().display().to_string(),
        state_dir: m.paths.state_dir.display().to_string(),
        started_at: m.started_at,
        vms_running: m.handles.len(),
    })
}

async fn daemon_shutdown(State(s): State<AppState>) -> StatusCode {
    s.shutdown.send_replace(true);
    StatusCode::NO_CONTENT
}

async fn list_vms(State(s): State<AppState>) -> ApiResult<Json<Vec<banger_api::Vm>>> {
    let m = &s.manager;
    Ok(Json(
        m.store
            .vms()
            .map_err(banger_core::Error::from)?
            .into_iter()
            .map(|v| m.view(v))
            .collect(),
    ))
}

async fn show_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<banger_api::Vm>> {
    Ok(Json(s.manager.view(s.manager.vm_record(&name)?)))
}

async fn create_vm(
    State(s): State<AppState>,
    body: Result<Json<CreateVm>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) =
        body.map_err(|e| error("invalid", format!("bad create request: {}", e.body_text())))?;
    Ok(accepted(s.manager.create(req)?))
}

async fn delete_vm(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(accepted(s.manager.delete(&name)?))
}

async fn start_vm(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(accepted(s.manager.start(&name)?))
}

async fn stop_vm(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(accepted(s.manager.stop(&name)?))
}

async fn restart_vm(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(accepted(s.manager.restart(&name)?))
}

async fn ssh_target(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Json<banger_api::SshTarget>> {
    Ok(Json(s.manager.ssh_target(&name, q.wait).await?))
}

#[derive(serde::Deserialize)]
pub struct WaitQuery {
    #[serde(default)]
    pub wait: bool,
}

async fn list_images(State(s): State<AppState>) -> ApiResult<Json<Vec<banger_api::Image>>> {
    Ok(Json(s.manager.images()?))
}

async fn show_image(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<banger_api::Image>> {
    Ok(Json(s.manager.image(&name)?))
}

async fn delete_image(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.manager.delete_image(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn build_image(
    State(s): State<AppState>,
    body: Result<Json<BuildImage>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) =
        body.map_err(|e| error("invalid", format!("bad build request: {}", e.body_text())))?;
    Ok(accepted(s.manager.build_image(req)?))
}

async fn register_image(
    State(s): State<AppState>,
    body: Result<Json<RegisterImage>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body.map_err(|e| {
        error(
            "invalid",
            format!("bad register request: {}", e.body_text()),
        )
    })?;
    Ok(accepted(s.manager.register_image(req)?))
}

async fn show_operation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<banger_api::Operation>> {
    if let Some(op) = s.manager.ops.get(&id) {
        return Ok(Json(op.snapshot()));
    }
    match s
        .manager
        .store
        .operation(&id)
        .map_err(banger_core::Error::from)?
    {
        Some(op) => Ok(Json(op)),
        None => Err(error("not_found", format!("no operation {id:?}"))),
    }
}

async fn doctor(State(s): State<AppState>) -> Json<banger_api::DoctorReport> {
    Json(s.manager.doctor().await)
}

#[derive(serde::Deserialize)]
pub struct FollowQuery {
    #[serde(default)]
    pub follow: bool,
}

pub type LogsQuery = Query<FollowQuery>;
