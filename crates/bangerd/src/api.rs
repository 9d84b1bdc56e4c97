//! The `/v1` HTTP API (routes are listed in `banger_api`'s module doc):
//! thin handlers that call the core's services and map their errors to
//! [`ApiError`] bodies, with the HTTP status of each [`ErrorCode`] decided
//! in one place ([`status_of`]).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use banger_api::paths::Paths;
use banger_api::{
    ApiError, BuildImage, CreateVm, DaemonStatus, ErrorCode, OperationRef, RegisterImage,
};
use banger_core::Services;
use banger_core::doctor::Doctor;
use banger_core::images::Images;
use banger_core::ops::{Op, Operations};
use banger_core::session::Sessions;
use banger_core::vm::Lifecycle;
use banger_core::workspace::Workspaces;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub vms: Arc<Lifecycle>,
    pub workspaces: Arc<Workspaces>,
    pub sessions: Arc<Sessions>,
    pub images: Arc<Images>,
    pub ops: Arc<Operations>,
    pub doctor: Arc<Doctor>,
    pub network: Arc<banger_core::net::Network>,
    pub paths: Paths,
    pub started_at: i64,
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    pub web: Arc<crate::web::Web>,
}

impl AppState {
    pub fn new(
        services: &Services,
        paths: Paths,
        shutdown: tokio::sync::watch::Sender<bool>,
        web_port: u16,
    ) -> AppState {
        AppState {
            vms: services.vms.clone(),
            workspaces: services.workspaces.clone(),
            sessions: services.sessions.clone(),
            images: services.images.clone(),
            ops: services.ops.clone(),
            doctor: services.doctor.clone(),
            network: services.network.clone(),
            paths,
            started_at: banger_sys::clock::unix_now(),
            shutdown: Arc::new(shutdown),
            web: Arc::new(crate::web::Web::new(web_port)),
        }
    }
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
        .route(
            "/v1/vms/{name}/snapshots",
            get(list_snapshots).post(take_snapshot),
        )
        .route(
            "/v1/vms/{name}/snapshots/{snapshot}",
            axum::routing::delete(delete_snapshot),
        )
        .route("/v1/vms/{name}/restore", post(restore_vm))
        .route("/v1/vms/{name}/tie", post(tie_vm))
        .route("/v1/vms/{name}/fork", post(fork_vm))
        .route("/v1/vms/{name}/logs", get(crate::streams::vm_logs))
        .route("/v1/vms/{name}/exec", post(crate::exec::exec))
        .route("/v1/vms/{name}/connect", post(crate::exec::connect))
        .route("/v1/vms/{name}/ssh", get(ssh_target))
        .route("/v1/vms/{name}/workspace", post(prepare_workspace))
        .route("/v1/vms/{name}/workspace/export", post(export_workspace))
        .route("/v1/vms/{name}/files/unpack", post(crate::exec::unpack))
        .route("/v1/vms/{name}/files/pack", post(crate::exec::pack))
        .route(
            "/v1/vms/{name}/sessions",
            get(crate::sessions::list).post(crate::sessions::start),
        )
        .route(
            "/v1/vms/{name}/sessions/{session}/attach",
            post(crate::sessions::attach),
        )
        .route(
            "/v1/vms/{name}/sessions/{session}/logs",
            get(crate::sessions::logs),
        )
        .route(
            "/v1/vms/{name}/sessions/{session}/stop",
            post(crate::sessions::stop),
        )
        .route("/v1/images", get(list_images))
        .route("/v1/images/build", post(build_image))
        .route("/v1/images/register", post(register_image))
        .route("/v1/images/{name}", get(show_image).delete(delete_image))
        .route(
            "/v1/images/{name}/warm",
            post(warm_image).delete(unwarm_image),
        )
        .route("/v1/operations/{id}", get(show_operation))
        .route("/v1/operations/{id}/cancel", post(cancel_operation))
        .route(
            "/v1/operations/{id}/events",
            get(crate::streams::operation_events),
        )
        .route("/v1/doctor", get(doctor))
        .route("/v1/doctor/fix", post(doctor_fix))
        .route("/v1/web", post(crate::web::address))
        .with_state(state)
}

/// An API error response.
pub struct HttpError(pub ApiError);

impl From<banger_core::Error> for HttpError {
    fn from(e: banger_core::Error) -> Self {
        HttpError(e.to_api())
    }
}

/// The HTTP status of each error code: the one place it is decided.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Invalid => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Engine => StatusCode::BAD_GATEWAY,
        ErrorCode::Host | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        // An operation's own error, never a request's; as a conflict if it were.
        ErrorCode::Cancelled => StatusCode::CONFLICT,
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (status_of(self.0.code), Json(self.0)).into_response()
    }
}

pub fn error(code: ErrorCode, message: impl Into<String>) -> HttpError {
    HttpError(ApiError {
        code,
        message: message.into(),
    })
}

type ApiResult<T> = Result<T, HttpError>;

fn accepted(op: Arc<Op>) -> Response {
    (StatusCode::ACCEPTED, Json(OperationRef { id: op.id() })).into_response()
}

async fn daemon_status(State(s): State<AppState>) -> Json<DaemonStatus> {
    Json(DaemonStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        socket: s.paths.socket().display().to_string(),
        state_dir: s.paths.state_dir.display().to_string(),
        started_at: s.started_at,
        vms_running: s.vms.running_count(),
    })
}

async fn daemon_shutdown(State(s): State<AppState>) -> StatusCode {
    s.shutdown.send_replace(true);
    StatusCode::NO_CONTENT
}

async fn list_vms(State(s): State<AppState>) -> ApiResult<Json<Vec<banger_api::Vm>>> {
    Ok(Json(s.vms.list()?))
}

async fn show_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<banger_api::Vm>> {
    Ok(Json(s.vms.show(&name)?))
}

async fn create_vm(
    State(s): State<AppState>,
    extensions: axum::http::Extensions,
    body: Result<Json<CreateVm>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body.map_err(|e| {
        error(
            ErrorCode::Invalid,
            format!("bad create request: {}", e.body_text()),
        )
    })?;
    Ok(accepted(s.vms.create_for(req, caller_of(&extensions))?))
}

/// Ties the VM to the process asking (`vm run --rm --name` of an existing
/// VM): the daemon deletes it once that process has ended.
async fn tie_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
    extensions: axum::http::Extensions,
) -> ApiResult<Json<serde_json::Value>> {
    s.vms.tie(&name, caller_of(&extensions))?;
    Ok(Json(serde_json::json!({})))
}

/// The pid of the process on the other end of the request's connection.
fn caller_of(extensions: &axum::http::Extensions) -> Option<u32> {
    extensions
        .get::<axum::extract::ConnectInfo<crate::peer::Peer>>()
        .map(|c| c.0.pid)
}

async fn delete_vm(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(accepted(s.vms.delete(&name)?))
}

async fn start_vm(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(accepted(s.vms.start(&name)?))
}

async fn stop_vm(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(accepted(s.vms.stop(&name)?))
}

async fn restart_vm(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(accepted(s.vms.restart(&name)?))
}

async fn list_snapshots(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<banger_api::Snapshot>>> {
    Ok(Json(s.vms.snapshots(&name)?))
}

async fn take_snapshot(
    State(s): State<AppState>,
    Path(name): Path<String>,
    req: Result<Json<banger_api::TakeSnapshot>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let req = body("snapshot", req)?;
    Ok(accepted(s.vms.snapshot(&name, req)?))
}

async fn fork_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
    req: Result<Json<banger_api::ForkVm>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let req = body("fork", req)?;
    Ok(accepted(s.vms.fork(&name, req)?))
}

async fn delete_snapshot(
    State(s): State<AppState>,
    Path((name, snapshot)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.vms.delete_snapshot(&name, &snapshot).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn restore_vm(
    State(s): State<AppState>,
    Path(name): Path<String>,
    req: Result<Json<banger_api::RestoreSnapshot>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let req = body("restore", req)?;
    Ok(accepted(s.vms.restore(&name, req)?))
}

/// A JSON body, or a 400 naming what is wrong with it.
pub fn body<T>(
    what: &str,
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, HttpError> {
    body.map(|Json(v)| v).map_err(|e| {
        error(
            ErrorCode::Invalid,
            format!("bad {what} request: {}", e.body_text()),
        )
    })
}

async fn prepare_workspace(
    State(s): State<AppState>,
    Path(name): Path<String>,
    req: Result<Json<banger_api::PrepareWorkspace>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let req = body("workspace", req)?;
    Ok(accepted(s.workspaces.prepare(&name, req)?))
}

async fn export_workspace(
    State(s): State<AppState>,
    Path(name): Path<String>,
    req: Result<Json<banger_api::ExportWorkspace>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let req = body("export", req)?;
    Ok(accepted(s.workspaces.export(&name, req)?))
}

async fn ssh_target(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Json<banger_api::SshTarget>> {
    Ok(Json(s.vms.ssh_target(&name, q.wait).await?))
}

#[derive(serde::Deserialize)]
pub struct WaitQuery {
    #[serde(default)]
    pub wait: bool,
}

async fn list_images(State(s): State<AppState>) -> ApiResult<Json<Vec<banger_api::Image>>> {
    let mut images = Vec::new();
    for image in s.images.list()? {
        images.push(s.vms.with_warm(image).await);
    }
    Ok(Json(images))
}

async fn show_image(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<banger_api::Image>> {
    Ok(Json(s.vms.with_warm(s.images.show(&name)?).await))
}

async fn delete_image(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    // A standby of the image would hold it.
    s.vms.discard_standbys(Some(&name)).await;
    s.images.delete(&name)?;
    s.vms.unwarm(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn warm_image(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(accepted(s.vms.warm_image(&name)?))
}

async fn unwarm_image(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if s.vms.unwarm(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(error(
            ErrorCode::NotFound,
            format!("image {name} has no warm snapshot"),
        ))
    }
}

async fn build_image(
    State(s): State<AppState>,
    body: Result<Json<BuildImage>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body.map_err(|e| {
        error(
            ErrorCode::Invalid,
            format!("bad build request: {}", e.body_text()),
        )
    })?;
    Ok(accepted(s.images.build(req)?))
}

async fn register_image(
    State(s): State<AppState>,
    body: Result<Json<RegisterImage>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body.map_err(|e| {
        error(
            ErrorCode::Invalid,
            format!("bad register request: {}", e.body_text()),
        )
    })?;
    Ok(accepted(s.images.register(req)?))
}

async fn show_operation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<banger_api::Operation>> {
    Ok(Json(s.ops.get(&id)?))
}

/// Cancels a running image build or register (Ctrl-C in the CLI following
/// it); answers with the operation as it stands, still running until its
/// undo is done.
async fn cancel_operation(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<banger_api::Operation>> {
    Ok(Json(s.ops.cancel(&id)?))
}

async fn doctor(State(s): State<AppState>) -> Json<banger_api::DoctorReport> {
    Json(report(&s, false).await)
}

/// `POST /v1/doctor/fix`: the report, with what was left behind removed.
async fn doctor_fix(State(s): State<AppState>) -> Json<banger_api::DoctorReport> {
    Json(report(&s, true).await)
}

async fn report(s: &AppState, fix: bool) -> banger_api::DoctorReport {
    let mut report = s.doctor.report().await;
    let leaks: Vec<banger_api::Check> = s
        .vms
        .leaks(fix)
        .into_iter()
        .chain(s.network.leaks(fix))
        .collect();
    if leaks.is_empty() {
        report.checks.push(banger_api::Check {
            name: "leaks".into(),
            status: banger_api::CheckStatus::Pass,
            detail: "nothing left behind: no stray process, directory, tap or bridge".into(),
            fix: None,
        });
    }
    report.checks.extend(leaks);
    report
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
        let config = banger_core::config::Config::default();
        let deps = banger_core::Deps::system(&config, &paths).unwrap();
        let services = Services::new(paths.clone(), config, store, deps).unwrap();
        let (tx, _rx) = tokio::sync::watch::channel(false);
        app(AppState::new(&services, paths, tx, 0))
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
    async fn snapshot_routes_answer_with_stable_codes() {
        let dir = tempfile::tempdir().unwrap();
        let app = app_in(dir.path());
        let (status, body) = call(app.clone(), "GET", "/v1/vms/nope/snapshots", "").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let (status, body) = call(
            app.clone(),
            "POST",
            "/v1/vms/nope/snapshots",
            "{\"nmae\": \"x\"}",
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid"))
        );
        let (status, _) = call(
            app.clone(),
            "POST",
            "/v1/vms/nope/restore",
            "{\"snapshot\": \"s\"}",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(app, "DELETE", "/v1/vms/nope/snapshots/s", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
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
                .contains("debian or minimal"),
            "{body}"
        );
    }
}
