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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app_in(dir: &std::path::Path) -> Router {
        let paths = banger_api::paths::Paths {
            config_file: dir.join("config.toml"),
            state_dir: dir.join("state"),
            runtime_dir: dir.join("run"),
            cache_dir: dir.join("cache"),
        };
        std::fs::create_dir_all(&paths.state_dir).unwrap();
        let store = banger_core::store::Store::open(&paths.state_dir.join("banger.db")).unwrap();
        let engine = Arc::new(banger_core::engine::qemu::QemuEngine {
            binary: "qemu-system-x86_64".into(),
        });
        let manager = Arc::new(Manager::new(
            paths,
            banger_core::config::Config::default(),
            store,
            engine,
            Arc::new(banger_sys::command::SystemRunner),
        ));
        let (tx, _rx) = tokio::sync::watch::channel(false);
        app(AppState {
            manager,
            shutdown: Arc::new(tx),
        })
    }

    async fn call(
        app: Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let res = app.oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn an_empty_daemon_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (status, body) = call(app_in(dir.path()), "GET", "/v1/vms", "").await;
        assert_eq!((status, body), (StatusCode::OK, serde_json::json!([])));
    }

    #[tokio::test]
    async fn unknown_vms_are_404_with_a_stable_code() {
        let dir = tempfile::tempdir().unwrap();
        let (status, body) = call(app_in(dir.path()), "GET", "/v1/vms/nope", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "not_found");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("no vm named \"nope\"")
        );
    }

    #[tokio::test]
    async fn bad_create_requests_are_400_and_record_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let app = app_in(dir.path());
        let (status, body) = call(app.clone(), "POST", "/v1/vms", "{\"cpus\": \"many\"}").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid"))
        );
        let (status, body) = call(app.clone(), "POST", "/v1/vms", "{\"name\": \"Bad_Name\"}").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["message"].as_str().unwrap().contains("lowercase"));
        let (status, body) =
            call(app.clone(), "POST", "/v1/vms", "{\"image\": \"none-such\"}").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let (_, list) = call(app, "GET", "/v1/vms", "").await;
        assert_eq!(list, serde_json::json!([]));
    }

    #[tokio::test]
    async fn unknown_presets_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (status, body) = call(
            app_in(dir.path()),
            "POST",
            "/v1/images/build",
            "{\"preset\": \"arch\"}",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("debian, minimal"),
            "{body}"
        );
    }
}
