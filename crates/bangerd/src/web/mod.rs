//! The web page: the daemon's state as HTML on 127.0.0.1, read-only, from
//! the same services the `/v1` API calls. Nothing listens until a client
//! asks where it is (`POST /v1/web`, `banger web`), through the API's own
//! socket and its peer check; the answer carries a key of 256 random bits
//! made at start, and the page serves nobody without it:
//!
//! - any other local user can connect to 127.0.0.1, so every request needs
//!   the key, as the first segment of its path (`/<key>/vms/api`): every
//!   address on the page is relative to it (`<base href="/<key>/">`). Not
//!   a cookie: a browser sends 127.0.0.1's cookies to every port there,
//!   so a page another local user serves on another port would receive
//!   it. The key is compared in constant time, before any routing;
//! - the `Host` header must name 127.0.0.1 or localhost at this port, so a
//!   web site that rebinds its own name to 127.0.0.1 gets nothing;
//! - every answer forbids framing, inline script, sniffing, caching and
//!   sending the address on (`Referrer-Policy`), and the page has no forms:
//!   it changes nothing.
//!
//! Any local user can also open connections without a key, so they are
//! bounded: at most [`CONNECTIONS`] at once (more are closed as they come)
//! and each must send a whole request head within [`HEAD_WAIT`], so
//! connections left open silently cannot take the daemon's descriptors,
//! and cannot keep the page from its owner for long.
//!
//! The page reloads itself when what it shows changes: `events` is a
//! server-sent event stream that compares a digest of that state, each
//! second, with the one the page was rendered from.

mod page;

use crate::api::{AppState, HttpError};
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use banger_api::{ErrorCode, VmState, WebAddress};
use std::net::SocketAddr;
use std::time::Duration;

/// Connections served at once.
pub const CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's head.
pub const HEAD_WAIT: Duration = Duration::from_secs(10);
/// How much of the console's end the VM page shows.
const CONSOLE_TAIL: u64 = 16 * 1024;
/// How many operations the overview lists; a VM's page lists its own
/// among this many.
const OPERATIONS: usize = 15;
const OPERATIONS_SEARCHED: usize = 200;
/// How long the page waits for a guest to list its sessions.
const SESSIONS_WAIT: Duration = Duration::from_secs(2);

pub struct Web {
    key: String,
    port: u16,
    bound: tokio::sync::Mutex<Option<SocketAddr>>,
}

impl Web {
    /// `port`: the configured one; 0 for any free port.
    pub fn new(port: u16) -> Web {
        let bytes: [u8; 32] = rand::random();
        Web {
            key: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            port,
            bound: tokio::sync::Mutex::new(None),
        }
    }

    /// Where the page's addresses start.
    fn base(&self) -> String {
        format!("/{}/", self.key)
    }

    fn key_is(&self, given: &str) -> bool {
        // Every byte compared, whatever the first difference.
        given.len() == self.key.len()
            && given
                .bytes()
                .zip(self.key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// `POST /v1/web`: the page's address with its key, listening from now on.
pub async fn address(State(s): State<AppState>) -> Result<axum::Json<WebAddress>, HttpError> {
    let mut bound = s.web.bound.lock().await;
    let addr = match *bound {
        Some(addr) => addr,
        None => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", s.web.port))
                .await
                .map_err(|e| {
                    crate::api::error(
                        ErrorCode::Host,
                        format!(
                            "the web page cannot listen on 127.0.0.1:{}: {e}; set web_port to a free port in the config",
                            s.web.port
                        ),
                    )
                })?;
            let addr = listener.local_addr().map_err(|e| {
                crate::api::error(ErrorCode::Host, format!("the web page's address: {e}"))
            })?;
            tokio::spawn(serve(listener, router(s.clone())));
            tracing::info!(%addr, "web page listening");
            *bound = Some(addr);
            addr
        }
    };
    Ok(axum::Json(WebAddress {
        url: format!("http://{addr}/{}/", s.web.key),
    }))
}

/// Serves `app` on `listener`, [`CONNECTIONS`] at a time, each closed when
/// it has not sent a request's head within [`HEAD_WAIT`].
async fn serve(listener: tokio::net::TcpListener, app: Router) {
    use tower::ServiceExt;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: let them come back.
                tracing::debug!(error = %e, "web page accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Full: this one is closed as it goes out of scope.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_WAIT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            drop(slot);
        });
    }
}

/// The pages, behind [`guard`]: it strips the key from the path before the
/// pages' router sees it (a layer on that router would run after routing).
fn router(state: AppState) -> Router {
    Router::new()
        .fallback_service(pages(state.clone()))
        .layer(axum::middleware::from_fn_with_state(state, guard))
}

fn pages(state: AppState) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/vms/{name}", get(vm_page))
        .route("/vms/{name}/console.txt", get(crate::streams::vm_logs))
        .route(
            "/vms/{name}/sessions/{session}/output.txt",
            get(session_output),
        )
        .route("/events", get(events))
        .route(
            "/app.js",
            get(|| async { text("text/javascript", page::SCRIPT) }),
        )
        .route(
            "/style.css",
            get(|| async { text("text/css", page::STYLE) }),
        )
        .fallback(|| async {
            html(
                StatusCode::NOT_FOUND,
                page::message("Not found", "This page does not exist."),
            )
        })
        .with_state(state)
}

fn text(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    (status, Html(body)).into_response()
}

/// The key and the host, checked before any page; the headers that make
/// the answer inert elsewhere, added to every one.
async fn guard(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let mut resp = check(&s, req, next).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             base-uri 'self'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

async fn check(s: &AppState, req: Request, next: Next) -> Response {
    let Some(port) = s.web.bound.lock().await.map(|a| a.port()) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if host != format!("127.0.0.1:{port}") && host != format!("localhost:{port}") {
        return html(
            StatusCode::FORBIDDEN,
            page::message(
                "Wrong address",
                &format!("This page answers only as http://127.0.0.1:{port}/."),
            ),
        );
    }
    let path = req.uri().path().to_string();
    let Some(rest) = behind_key(&path, |k| s.web.key_is(k)) else {
        return denied();
    };
    if rest.is_none() {
        // `/<key>`: the page's addresses are relative to `/<key>/`.
        let mut resp = StatusCode::PERMANENT_REDIRECT.into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("{path}/")) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return resp;
    }
    let inner = match req.uri().query() {
        Some(q) => format!("/{}?{q}", rest.unwrap_or_default()),
        None => format!("/{}", rest.unwrap_or_default()),
    };
    let mut req = req;
    match inner.parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    }
    next.run(req).await
}

/// What follows the key in `path` (`/<key>/rest`): `Some(Some(rest))`,
/// `Some(None)` for `/<key>` alone, `None` when the first segment is not
/// the key.
fn behind_key(path: &str, is_key: impl Fn(&str) -> bool) -> Option<Option<&str>> {
    let p = path.strip_prefix('/')?;
    let (first, rest) = match p.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (p, None),
    };
    is_key(first).then_some(rest)
}

fn denied() -> Response {
    html(
        StatusCode::UNAUTHORIZED,
        page::message(
            "This page needs its key",
            "Run `banger web` for its address, key included.",
        ),
    )
}

fn not_found_page(e: banger_core::Error) -> Response {
    let api = e.to_api();
    let status = crate::api::status_of(api.code);
    html(status, page::message("banger", &api.message))
}

/// What one page shows, read once: the page is rendered from it and its
/// digest taken of it, and the event stream reads it again each second.
struct Seen {
    vms: Vec<banger_api::Vm>,
    images: Vec<banger_api::Image>,
    /// The newest operations (a VM's page picks its own among them).
    ops: Vec<banger_api::Operation>,
    /// For one VM's page: that VM, its snapshots and sessions.
    vm: Option<VmSeen>,
}

struct VmSeen {
    vm: banger_api::Vm,
    snapshots: Vec<banger_api::Snapshot>,
    sessions: Result<Vec<banger_api::Session>, String>,
}

impl Seen {
    async fn gather(s: &AppState, vm: Option<&str>) -> Result<Seen, banger_core::Error> {
        let vm = match vm {
            Some(name) => {
                let vm = s.vms.show(name)?;
                Some(VmSeen {
                    snapshots: s.vms.snapshots(name).unwrap_or_default(),
                    sessions: sessions(s, &vm).await,
                    vm,
                })
            }
            None => None,
        };
        Ok(Seen {
            vms: s.vms.list()?,
            images: s.images.list().unwrap_or_default(),
            ops: s.ops.recent(OPERATIONS_SEARCHED).unwrap_or_default(),
            vm,
        })
    }

    /// The operations the page lists: the newest, or one VM's newest.
    fn shown_ops(&self) -> Vec<banger_api::Operation> {
        let of_page =
            |o: &&banger_api::Operation| self.vm.as_ref().is_none_or(|v| o.target == v.vm.name);
        self.ops
            .iter()
            .filter(of_page)
            .take(OPERATIONS)
            .cloned()
            .collect()
    }

    /// What the page shows, hashed: every VM's state and address, images'
    /// warm snapshots, the operations listed and the stage each is in and,
    /// on one VM's page, its snapshots and sessions.
    fn digest(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for v in &self.vms {
            (
                &v.name,
                v.state.as_str(),
                &v.ip,
                &v.paused,
                &v.last_error,
                v.pid,
            )
                .hash(&mut h);
        }
        for i in &self.images {
            let warm = i
                .warm
                .as_ref()
                .map(|w| (w.created_at, &w.stale, &w.standby));
            (&i.name, i.size_bytes, warm).hash(&mut h);
        }
        for op in self.shown_ops() {
            (&op.id, page::word(op.state), op.stages.len()).hash(&mut h);
        }
        if let Some(v) = &self.vm {
            for snap in &v.snapshots {
                (&snap.name, snap.created_at).hash(&mut h);
            }
            for ses in v.sessions.iter().flatten() {
                (&ses.name, ses.state.as_str(), ses.exit_code, ses.signal).hash(&mut h);
            }
        }
        format!("{:016x}", h.finish())
    }
}

async fn overview(State(s): State<AppState>) -> Response {
    let seen = match Seen::gather(&s, None).await {
        Ok(seen) => seen,
        Err(e) => return not_found_page(e),
    };
    let now = banger_sys::clock::unix_now();
    let state_dir = s.paths.state_dir.display().to_string();
    let daemon = page::Daemon {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        state_dir: &state_dir,
        started_at: s.started_at,
    };
    let body = page::overview(&daemon, &seen.vms, &seen.images, &seen.shown_ops(), now);
    html(
        StatusCode::OK,
        page::document(&s.web.base(), "banger", &seen.digest(), None, &body),
    )
}

async fn vm_page(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let seen = match Seen::gather(&s, Some(&name)).await {
        Ok(seen) => seen,
        Err(e) => return not_found_page(e),
    };
    let Some(v) = &seen.vm else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let (console, console_cut) = match s.vms.console_log(&name) {
        Ok(path) => {
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            let from = len.saturating_sub(CONSOLE_TAIL);
            let bytes = banger_core::console::read_at(&path, from, CONSOLE_TAIL);
            // Start at a whole line when cut.
            let start = if from > 0 {
                bytes.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1)
            } else {
                0
            };
            (bytes[start..].to_vec(), from > 0)
        }
        Err(_) => (Vec::new(), false),
    };
    let ops = seen.shown_ops();
    let extras = page::VmExtras {
        sessions: &v.sessions,
        snapshots: &v.snapshots,
        console: &console,
        console_cut,
        operations: &ops,
    };
    let body = page::vm(&v.vm, &extras, banger_sys::clock::unix_now());
    html(
        StatusCode::OK,
        page::document(
            &s.web.base(),
            &v.vm.name,
            &seen.digest(),
            Some(&v.vm.name),
            &body,
        ),
    )
}

/// A session's output as text (a guest's bytes: `nosniff` keeps a browser
/// from taking them for a page).
async fn session_output(
    State(s): State<AppState>,
    Path((name, session)): Path<(String, String)>,
) -> Response {
    crate::sessions::output(&s, &name, &session, false, "text/plain; charset=utf-8")
        .await
        .unwrap_or_else(|e| {
            let status = crate::api::status_of(e.0.code);
            html(status, page::message("banger", &e.0.message))
        })
}

async fn sessions(s: &AppState, vm: &banger_api::Vm) -> Result<Vec<banger_api::Session>, String> {
    if vm.state != VmState::Running {
        return Err(format!(
            "The VM is {}: sessions are listed while it runs.",
            vm.state
        ));
    }
    match tokio::time::timeout(SESSIONS_WAIT, s.sessions.list(&vm.name)).await {
        Ok(Ok(list)) => Ok(list),
        Ok(Err(e)) => Err(format!(
            "The guest did not list them: {}",
            e.to_api().message
        )),
        Err(_) => Err("The guest did not list them in time.".into()),
    }
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    since: String,
    #[serde(default)]
    vm: Option<String>,
}

/// `event: change` once the page's digest differs from `since`; a comment
/// every 15 s meanwhile, so a closed page is noticed.
async fn events(State(s): State<AppState>, Query(q): Query<EventsQuery>) -> Response {
    let stream = futures::stream::unfold(Some((s, q, 0u32)), |st| async move {
        let (s, q, mut ticks) = st?;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // A page whose VM is gone has changed too.
            let now = Seen::gather(&s, q.vm.as_deref())
                .await
                .map(|seen| seen.digest());
            if now.as_deref().ok() != Some(q.since.as_str()) {
                return Some((
                    Ok::<_, std::convert::Infallible>("event: change\ndata: \n\n".to_string()),
                    None,
                ));
            }
            ticks += 1;
            if ticks.is_multiple_of(15) {
                return Some((Ok(": still the same\n\n".to_string()), Some((s, q, ticks))));
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_compares_whole() {
        let w = Web::new(0);
        let key = w.key.clone();
        assert_eq!(key.len(), 64);
        assert!(w.key_is(&key));
        assert!(!w.key_is(&key[..63]));
        assert!(!w.key_is(""));
        let mut other = key.into_bytes();
        other[63] = if other[63] == b'0' { b'1' } else { b'0' };
        assert!(!w.key_is(&String::from_utf8(other).unwrap()));
        assert_ne!(Web::new(0).key, w.key, "a key per daemon");
    }

    #[test]
    fn the_key_is_the_first_segment_of_the_path() {
        let is = |k: &str| k == "k3y";
        assert_eq!(behind_key("/k3y/vms/a", is), Some(Some("vms/a")));
        assert_eq!(behind_key("/k3y/", is), Some(Some("")));
        assert_eq!(behind_key("/k3y", is), Some(None));
        assert_eq!(behind_key("/", is), None);
        assert_eq!(behind_key("/vms/k3y/a", is), None);
        assert_eq!(behind_key("/k3yx/a", is), None);
        assert_eq!(behind_key("k3y/a", is), None);
    }
}
