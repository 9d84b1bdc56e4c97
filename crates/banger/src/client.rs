//! HTTP/1.1 client for the daemon's API on its unix socket. Owns the
//! transport: one connection per request, JSON bodies in and out, mapping
//! non-2xx answers to [`ApiError`], following an operation's server-sent
//! events, and the `banger-exec` upgrade. It prints nothing; rendering is
//! `progress.rs`'s and `output.rs`'s job.
//!
//! The exec upgrade, step by step:
//!
//! 1. `POST /v1/vms/{name}/exec` with `Connection: Upgrade`,
//!    `Upgrade: banger-exec` and the JSON [`ExecRequest`] in the
//!    `x-banger-exec` header (non-ASCII escaped, so any argv fits a header).
//! 2. The daemon answers `101 Switching Protocols`, or an error with an
//!    [`ApiError`] body (unknown VM, VM not running…).
//! 3. The connection becomes a raw byte stream carrying banger-proto frames
//!    both ways; `commands/exec.rs` drives it.

use std::path::{Path, PathBuf};

use banger_api::{ApiError, EXEC_HEADER, EXEC_UPGRADE, Operation, OperationEvent, OperationState};
use banger_proto::ExecRequest;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::sse::SseParser;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: it is missing or refuses connections.
    #[error("the daemon is not running (nothing answers on {})", socket.display())]
    NotRunning {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something accepts connections on the socket but never answers.
    #[error(
        "the daemon on {} did not answer within {secs} s: it may be stuck; see its log {}{}",
        socket.display(),
        log.display(),
        pid.map(|p| format!(", or end it with kill {p}")).unwrap_or_default()
    )]
    NoAnswer {
        socket: PathBuf,
        log: PathBuf,
        secs: u64,
        pid: Option<u32>,
    },
    #[error("cannot connect to the daemon on {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error; its message is meant for humans.
    #[error("{}", error.message)]
    Api { status: StatusCode, error: ApiError },
    #[error("the connection to the daemon failed")]
    Http(#[from] hyper::Error),
    #[error("cannot build a request for {path}")]
    Request {
        path: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("the daemon's answer to {path} is not what this banger expects")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the event stream of operation {id} ended before the operation finished")]
    StreamEnded { id: String },
}

impl ClientError {
    /// True when no daemon listens, so starting one makes sense. A daemon
    /// that dropped the connection without answering counts too: that is a
    /// daemon in the middle of dying (a killed process's threads close its
    /// socket last), and a new one waits on its lock until it is gone.
    pub fn is_not_running(&self) -> bool {
        match self {
            ClientError::NotRunning { .. } => true,
            ClientError::Http(err) => dropped_unanswered(err),
            _ => false,
        }
    }

    /// The daemon's stable error code, when it answered with one.
    pub fn api_code(&self) -> Option<banger_api::ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// A handle on the daemon's socket; cheap to clone, connects per request.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None).await
    }

    /// Whether the daemon on this socket is gone (not merely busy), asked
    /// after a connection to it broke (see [`ClientError::is_not_running`]).
    pub async fn daemon_gone(&self) -> bool {
        match self.get::<banger_api::DaemonStatus>("/v1/daemon").await {
            Err(err) => err.is_not_running() || matches!(err, ClientError::Connect { .. }),
            Ok(_) => false,
        }
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let json = serde_json::to_vec(body).map_err(|source| ClientError::Decode {
            path: path.into(),
            source,
        })?;
        self.call(Method::POST, path, Some(json)).await
    }

    /// POST without a body (`…/start`, `/v1/daemon/shutdown`).
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::POST, path, None).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::DELETE, path, None).await
    }

    /// GET whose body is consumed as it arrives (logs, event streams).
    pub async fn get_stream(&self, path: &str) -> Result<Incoming> {
        let response = self.send(request(Method::GET, path, None)?).await?;
        if !response.status().is_success() {
            return Err(error_from(response).await);
        }
        Ok(response.into_body())
    }

    /// Follows `/v1/operations/{id}/events`, handing each event to
    /// `on_event`, and returns the operation's final record. Events this
    /// build does not know are skipped, so newer daemons stay compatible.
    pub async fn follow_operation(
        &self,
        id: &str,
        mut on_event: impl FnMut(&OperationEvent),
    ) -> Result<Operation> {
        let path = format!("/v1/operations/{}/events", path_segment(id));
        let mut body = self.get_stream(&path).await?;
        let mut parser = SseParser::default();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            for payload in parser.push(&data) {
                let Ok(event) = serde_json::from_str::<OperationEvent>(&payload) else {
                    continue;
                };
                on_event(&event);
                if let OperationEvent::Done { operation } = event {
                    return Ok(operation);
                }
            }
        }
        // The stream may close without `done` (daemon restart): the record
        // still says how it ended, if it has.
        let operation: Operation = self
            .get(&format!("/v1/operations/{}", path_segment(id)))
            .await?;
        if operation.state == OperationState::Running {
            return Err(ClientError::StreamEnded { id: id.to_string() });
        }
        Ok(operation)
    }

    /// Opens an exec stream to the VM's agent (see the module doc).
    pub async fn exec(&self, vm: &str, exec: &ExecRequest) -> Result<TokioIo<Upgraded>> {
        let path = format!("/v1/vms/{}/exec", path_segment(vm));
        self.upgrade(&path, EXEC_UPGRADE, Some((EXEC_HEADER, ascii_json(exec))))
            .await
    }

    /// Opens a raw tunnel to TCP `port` inside the VM (the agent's Connect).
    pub async fn connect(&self, vm: &str, port: u16) -> Result<TokioIo<Upgraded>> {
        let path = format!("/v1/vms/{}/connect?port={port}", path_segment(vm));
        self.upgrade(&path, banger_api::CONNECT_UPGRADE, None).await
    }

    /// Opens an agent `unpack` of guest `path` (the caller sends the archive).
    pub async fn unpack(&self, vm: &str, path: &str) -> Result<TokioIo<Upgraded>> {
        let path = format!(
            "/v1/vms/{}/files/unpack?path={}",
            path_segment(vm),
            query_value(path)
        );
        self.upgrade(&path, banger_api::FILES_UPGRADE, None).await
    }

    /// Opens an agent `pack` of guest `path` (the caller reads the archive).
    pub async fn pack(&self, vm: &str, path: &str) -> Result<TokioIo<Upgraded>> {
        let path = format!(
            "/v1/vms/{}/files/pack?path={}",
            path_segment(vm),
            query_value(path)
        );
        self.upgrade(&path, banger_api::FILES_UPGRADE, None).await
    }

    /// Attaches to a guest session (agent frames both ways).
    pub async fn attach(&self, vm: &str, session: &str) -> Result<TokioIo<Upgraded>> {
        let path = format!(
            "/v1/vms/{}/sessions/{}/attach",
            path_segment(vm),
            path_segment(session)
        );
        self.upgrade(&path, banger_api::ATTACH_UPGRADE, None).await
    }

    /// POSTs an HTTP upgrade to `protocol` and returns the raw stream.
    async fn upgrade(
        &self,
        path: &str,
        protocol: &str,
        header: Option<(&str, String)>,
    ) -> Result<TokioIo<Upgraded>> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, "localhost")
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, protocol);
        if let Some((name, value)) = header {
            builder = builder.header(name, value);
        }
        let req = builder
            .body(Full::default())
            .map_err(|source| ClientError::Request {
                path: path.to_string(),
                source,
            })?;
        let response = self.send(req).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(error_from(response).await);
        }
        Ok(TokioIo::new(hyper::upgrade::on(response).await?))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let response = self.send(request(method, path, body)?).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(error_from(response).await);
        }
        let bytes = response.into_body().collect().await?.to_bytes();
        // 204 and empty bodies decode as `null`, which `()` accepts.
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            path: path.into(),
            source,
        })
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| {
                let socket = self.socket.clone();
                match source.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning { socket, source }
                    }
                    _ => ClientError::Connect { socket, source },
                }
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends with the connection; errors surface through the response.
            let _ = conn.with_upgrades().await;
        });
        Ok(sender.send_request(req).await?)
    }
}

/// Whether hyper gave up because the peer closed or reset the connection
/// before a response began.
fn dropped_unanswered(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() || err.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        source = e.source();
    }
    false
}

fn request(method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "localhost");
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|source| ClientError::Request {
            path: path.into(),
            source,
        })
}

/// Reads an error answer: an [`ApiError`] body, or whatever text came.
async fn error_from(response: Response<Incoming>) -> ClientError {
    let status = response.status();
    let bytes = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => return ClientError::Http(err),
    };
    let error = serde_json::from_slice::<ApiError>(&bytes).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        ApiError {
            code: banger_api::ErrorCode::Internal,
            message: if text.is_empty() {
                format!("the daemon answered {status}")
            } else {
                format!("the daemon answered {status}: {text}")
            },
        }
    });
    ClientError::Api { status, error }
}

/// Percent-encodes one path segment (names are DNS labels, but a mistyped
/// name must still give the daemon's "not found" rather than a bad URI).
/// `s` percent-encoded for a query value.
pub fn query_value(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// JSON with every non-ASCII character as a `\u` escape, so it is a valid
/// header value whatever the argv holds.
fn ascii_json<T: Serialize>(value: &T) -> String {
    let json = serde_json::to_string(value).expect("wire types serialize");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod test_server {
    //! A real HTTP/1.1 server on a temp-dir unix socket, answering through a
    //! plain function, for tests of the client and of commands.

    use std::convert::Infallible;
    use std::future::Future;
    use std::sync::Arc;

    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;

    pub type Body = BoxBody<Bytes, Infallible>;

    pub struct TestServer {
        pub _dir: tempfile::TempDir,
        pub client: super::Client,
    }

    pub fn serve<F, Fut>(handler: F) -> TestServer
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bangerd.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestServer {
            client: super::Client::new(socket),
            _dir: dir,
        }
    }

    pub fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
        let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
        *response.status_mut() = status;
        response
    }
}

#[cfg(test)]
mod tests {
    use banger_api::{DaemonStatus, OperationKind};
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use serde_json::json;

    use super::test_server::{json, serve};
    use super::*;

    fn status_json() -> serde_json::Value {
        json!({"pid": 42, "version": "0.1.0", "socket": "/s", "state_dir": "/d", "started_at": 1, "vms_running": 2})
    }

    fn operation_json(state: &str) -> serde_json::Value {
        json!({"id": "op1", "kind": "create", "target": "web", "state": state, "stages": [], "started_at": 0, "duration_ms": 2600})
    }

    #[tokio::test]
    async fn get_decodes_json() {
        let server = serve(|req| async move {
            assert_eq!(req.uri().path(), "/v1/daemon");
            json(StatusCode::OK, status_json())
        });
        let status: DaemonStatus = server.client.get("/v1/daemon").await.unwrap();
        assert_eq!(status.pid, 42);
        assert_eq!(status.vms_running, 2);
    }

    #[tokio::test]
    async fn error_answers_carry_the_daemons_message() {
        let server = serve(|_| async {
            json(
                StatusCode::NOT_FOUND,
                json!({"code": "not_found", "message": "no vm named ghost"}),
            )
        });
        let err = server
            .client
            .get::<serde_json::Value>("/v1/vms/ghost")
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "no vm named ghost");
        assert_eq!(err.api_code(), Some(banger_api::ErrorCode::NotFound));
    }

    #[tokio::test]
    async fn non_json_errors_still_read_well() {
        let server = serve(|_| async {
            let mut response = json(StatusCode::BAD_GATEWAY, json!(null));
            *response.body_mut() = Full::new(Bytes::from("upstream gone")).boxed();
            response
        });
        let err = server
            .client
            .get::<serde_json::Value>("/v1/x")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the daemon answered 502 Bad Gateway: upstream gone"
        );
    }

    #[tokio::test]
    async fn empty_answers_decode_as_unit() {
        let server = serve(|_| async {
            let mut response = json(StatusCode::NO_CONTENT, json!(null));
            *response.body_mut() = Full::new(Bytes::new()).boxed();
            response
        });
        server
            .client
            .post_empty::<()>("/v1/daemon/shutdown")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn missing_socket_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let err = Client::new(dir.path().join("nope.sock"))
            .get::<()>("/v1/daemon")
            .await
            .unwrap_err();
        assert!(err.is_not_running(), "{err:?}");
    }

    #[tokio::test]
    async fn a_daemon_dropping_connections_unanswered_counts_as_not_running() {
        // What a client sees while a killed daemon's threads are exiting:
        // the connect succeeds, then the connection closes with no answer.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bangerd.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let err = Client::new(&socket)
            .get::<()>("/v1/daemon")
            .await
            .unwrap_err();
        assert!(err.is_not_running(), "{err:?}");
    }

    #[tokio::test]
    async fn operation_stream_is_followed_to_done() {
        let server = serve(|req| async move {
            assert_eq!(req.uri().path(), "/v1/operations/op1/events");
            let text = format!(
                "data: {}\n\n: ping\n\ndata: {}\n\ndata: {}\n\ndata: {}\n\n",
                json!({"event": "stage_started", "name": "boot", "label": "boot the kernel"}),
                json!({"event": "some_future_event"}),
                json!({"event": "stage_finished", "name": "boot", "duration_ms": 2400}),
                json!({"event": "done", "operation": operation_json("succeeded")}),
            );
            // Awkward chunk boundaries, as a real network would cut them.
            let chunks: Vec<_> = text
                .as_bytes()
                .chunks(7)
                .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let mut response = json(StatusCode::OK, json!(null));
            *response.body_mut() = BodyExt::boxed(StreamBody::new(futures::stream::iter(chunks)));
            response
        });
        let mut seen = Vec::new();
        let op = server
            .client
            .follow_operation("op1", |ev| {
                seen.push(match ev {
                    OperationEvent::StageStarted { name, .. } => format!("started {name}"),
                    OperationEvent::StageFinished {
                        name, duration_ms, ..
                    } => format!("finished {name} {duration_ms}"),
                    OperationEvent::Done { .. } => "done".into(),
                    other => format!("{other:?}"),
                })
            })
            .await
            .unwrap();
        assert_eq!(seen, ["started boot", "finished boot 2400", "done"]);
        assert_eq!(op.kind, OperationKind::Create);
        assert_eq!(op.state, OperationState::Succeeded);
    }

    #[tokio::test]
    async fn a_stream_cut_short_falls_back_to_the_record() {
        let server = serve(|req| async move {
            if req.uri().path().ends_with("/events") {
                let mut response = json(StatusCode::OK, json!(null));
                *response.body_mut() =
                    Full::new(Bytes::from("data: {\"event\":\"stage_sta")).boxed();
                response
            } else {
                json(StatusCode::OK, operation_json("failed"))
            }
        });
        let op = server.client.follow_operation("op1", |_| {}).await.unwrap();
        assert_eq!(op.state, OperationState::Failed);
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("web-1"), "web-1");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn exec_header_json_is_ascii() {
        let req = ExecRequest {
            argv: vec!["echo".into(), "héllo 😀".into()],
            ..Default::default()
        };
        let header = ascii_json(&req);
        assert!(header.is_ascii());
        assert_eq!(serde_json::from_str::<ExecRequest>(&header).unwrap(), req);
    }
}
