//! The agent's end of the host⇄agent channel, over any byte stream: for
//! each host connection, the `banger-proto` handshake, then yamux (the agent
//! is the server) with one request on every inbound stream. Owns the
//! handshake, the yamux loop and routing a stream to its request; owns no
//! transport (`port.rs` brings the virtio-serial port, tests a
//! `tokio::io::duplex`).
//!
//! 1. Discard bytes until a full `BANGER-SYNC <nonce>` line whose nonce is
//!    one printable word; anything before the marker on that line is
//!    garbage from an earlier connection.
//! 2. Answer `BANGER-READY <nonce> <protocol>`, on a fresh handle to the
//!    transport: the port can hand over the host's bytes before it shows a
//!    host is there, and a handle made in between stays hung up. An answer
//!    that cannot be written is tried again on the next handle for a while
//!    ([`ANSWER_FOR`]): the host sent its line once and waits.
//! 3. Run yamux until the host hangs up or sends something that is not
//!    yamux. In the second case the host most likely reconnected without the
//!    agent seeing a hang-up, and its new sync line went into the yamux
//!    decoder; the last bytes read are handed back ([`Channel::tail`]) so the
//!    next handshake finds that line.
//! 4. Ending the connection drops every stream, which kills the processes
//!    they run (see `exec.rs`); sessions (`sessions/`) are tied to no stream
//!    and keep running.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use banger_proto::{
    Envelope, ErrorBody, Frame, FrameKind, HealthResponse, PROTOCOL_VERSION, Request,
};
use futures::future::poll_fn;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::Agent;

/// Longest run of bytes without a newline kept while looking for the sync line.
const MAX_PENDING: usize = 4096;
/// How many of the last bytes read are kept for resynchronisation.
const TAIL: usize = 256;
/// How long a sync line whose answer could not be written is answered
/// again on each new attempt (the host waits 10 s for it).
pub const ANSWER_FOR: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("handshake failed")]
    Handshake {
        #[source]
        source: io::Error,
    },
    #[error("yamux connection failed")]
    Yamux {
        #[source]
        source: yamux::ConnectionError,
    },
}

/// Serves one host connection on `io` until the host hangs up. Returns
/// `Ok` on a clean end, including a hang-up before the handshake.
pub async fn serve_connection<IO>(io: IO, agent: Arc<Agent>) -> Result<(), ChannelError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Channel::default().serve(io, agent).await
}

/// The agent's end of one channel (such as the port), with what one host
/// connection on it leaves for the next.
#[derive(Debug, Default)]
pub struct Channel {
    /// Bytes to look for the next sync line in before reading more.
    pub tail: Vec<u8>,
    /// A sync line read whose answer could not be written yet.
    unanswered: Option<Unanswered>,
}

#[derive(Debug)]
struct Unanswered {
    nonce: String,
    /// What came after the sync line.
    leftover: Vec<u8>,
    /// When the line was read.
    since: Instant,
}

impl Channel {
    /// Whether the connection that just ended was cut by the host
    /// reconnecting: what it read last holds the next sync line (every
    /// restore does this; the snapshot's connection is gone).
    pub fn host_reconnected(&self) -> bool {
        let sync = banger_proto::SYNC_PREFIX.as_bytes();
        self.tail.windows(sync.len()).any(|w| w == sync)
    }

    /// Whether a host's sync line is waiting for an answer that could not
    /// be written: the next attempt answers it before reading anything.
    pub fn answering(&self) -> bool {
        self.unanswered.is_some()
    }

    /// Like [`serve_connection`], starting from (and afterwards leaving in
    /// `self.tail`) bytes an earlier connection read but did not use.
    pub async fn serve<IO>(&mut self, io: IO, agent: Arc<Agent>) -> Result<(), ChannelError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_reopening(io, Ok, agent).await
    }

    /// [`Channel::serve`], answering the host and serving it on
    /// `reopen(io)`, a fresh handle to the same transport.
    pub async fn serve_reopening<IO, F>(
        &mut self,
        mut io: IO,
        reopen: F,
        agent: Arc<Agent>,
    ) -> Result<(), ChannelError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnOnce(IO) -> io::Result<IO>,
    {
        let unanswered = self
            .unanswered
            .take()
            .filter(|u| u.since.elapsed() < ANSWER_FOR);
        let Unanswered {
            nonce,
            leftover,
            since,
        } = match unanswered {
            Some(u) => u,
            None => {
                let pending = std::mem::take(&mut self.tail);
                let Some((nonce, leftover)) = handshake(&mut io, pending)
                    .await
                    .map_err(|source| ChannelError::Handshake { source })?
                else {
                    return Ok(());
                };
                Unanswered {
                    nonce,
                    leftover,
                    since: Instant::now(),
                }
            }
        };
        let ready = banger_proto::ready_line(&nonce, PROTOCOL_VERSION);
        let answered = async {
            let mut io = reopen(io)?;
            io.write_all(ready.as_bytes()).await?;
            io.flush().await?;
            Ok(io)
        }
        .await;
        let io = match answered {
            Ok(io) => io,
            Err(source) => {
                self.unanswered = Some(Unanswered {
                    nonce,
                    leftover,
                    since,
                });
                return Err(ChannelError::Handshake { source });
            }
        };
        crate::console::log(format_args!("host connected"));

        let recent = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL)));
        let io = Rewind {
            leftover,
            inner: io,
            recent: recent.clone(),
        };
        let mut conn =
            yamux::Connection::new(io.compat(), yamux::Config::default(), yamux::Mode::Server);
        loop {
            match poll_fn(|cx| conn.poll_next_inbound(cx)).await {
                Some(Ok(stream)) => {
                    tokio::spawn(handle_stream(stream, agent.clone()));
                }
                Some(Err(source)) => {
                    if !matches!(
                        source,
                        yamux::ConnectionError::Io(_) | yamux::ConnectionError::Closed
                    ) {
                        self.tail = recent
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .iter()
                            .copied()
                            .collect();
                    }
                    return Err(ChannelError::Yamux { source });
                }
                None => {
                    crate::console::log(format_args!("host disconnected"));
                    return Ok(());
                }
            }
        }
    }
}

/// Reads until a full sync line; returns its nonce and the bytes after it,
/// or `None` if the stream ended first.
async fn handshake<R: AsyncRead + Unpin>(
    io: &mut R,
    mut pending: Vec<u8>,
) -> io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = [0u8; 4096];
    loop {
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            let nonce = line
                .rfind(banger_proto::SYNC_PREFIX)
                .and_then(|at| banger_proto::parse_sync(&line[at..]));
            if let Some(nonce) = nonce.filter(|n| plausible_nonce(n)) {
                return Ok(Some((nonce.to_string(), pending)));
            }
        }
        if pending.len() > MAX_PENDING {
            pending.drain(..pending.len() - TAIL);
        }
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// A nonce is one short printable word; a "sync line" that is a stale
/// fragment glued to binary garbage is not answered.
fn plausible_nonce(nonce: &str) -> bool {
    nonce.len() <= 128 && nonce.bytes().all(|b| b.is_ascii_graphic())
}

/// The channel after the handshake: first the bytes the handshake read past
/// the sync line, then the channel itself; remembers the last bytes read.
struct Rewind<IO> {
    leftover: Vec<u8>,
    inner: IO,
    recent: Arc<Mutex<VecDeque<u8>>>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.leftover.is_empty() {
            let n = self.leftover.len().min(buf.remaining());
            buf.put_slice(&self.leftover[..n]);
            self.leftover.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            for &b in &buf.filled()[before..] {
                if recent.len() == TAIL {
                    recent.pop_front();
                }
                recent.push_back(b);
            }
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves the one request of an inbound stream.
async fn handle_stream(stream: yamux::Stream, agent: Arc<Agent>) {
    let (mut input, mut output) = tokio::io::split(stream.compat());
    let frame = match banger_proto::read_frame(&mut input).await {
        Ok(Some(frame)) => frame,
        _ => return,
    };
    let request = match parse_request(&frame) {
        Ok(request) => request,
        Err((code, message)) => {
            let _ = write_error(&mut output, code, message).await;
            let _ = output.shutdown().await;
            return;
        }
    };
    match request {
        Request::Health => {
            let _ = respond(&mut output, &health()).await;
        }
        // A command (an ssh probe too) lets the guest's own work start
        // once it ends; copying files in is what comes before one.
        Request::Exec(req) => {
            crate::exec::run(&agent, req, input, output).await;
            agent.background.open();
        }
        // sshd's port: the host wants sshd, which is background work.
        Request::Connect { port } if port == crate::connect::SSH_PORT && agent.sshd => {
            agent.background.open_now();
            crate::connect::run(port, Some(crate::connect::SSHD_START), input, output).await;
        }
        Request::Connect { port } => {
            crate::connect::run(port, None, input, output).await;
            agent.background.open();
        }
        Request::Unpack(req) => crate::files::unpack(req, input, output).await,
        Request::Pack(req) => crate::files::pack(req, output).await,
        Request::Session(req) => {
            crate::sessions::run(&agent, req, input, output).await;
            agent.background.open();
        }
        Request::Identity(req) => match crate::identity::apply(&agent, req).await {
            Ok(report) => {
                let _ = respond(&mut output, &report).await;
            }
            Err(e) => {
                let message = crate::console::chain(&e);
                crate::console::log(format_args!("identity: {message}"));
                let _ = write_error(&mut output, "identity_failed", message).await;
                let _ = output.shutdown().await;
            }
        },
        Request::Shutdown { reboot } => {
            let _ = respond(&mut output, &serde_json::json!({})).await;
            drop(output);
            // Give the yamux connection a moment to put the answer on the wire.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let power = agent.power.clone();
            let _ = tokio::task::spawn_blocking(move || power.shutdown(reboot)).await;
        }
    }
}

/// Reads the envelope, checking the protocol version before the request
/// itself (a newer host may send requests this agent cannot parse).
fn parse_request(frame: &Frame) -> Result<Request, (&'static str, String)> {
    if frame.kind != FrameKind::Request {
        return Err((
            "bad_request",
            format!("expected a request frame, got {:?}", frame.kind),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&frame.payload)
        .map_err(|e| ("bad_request", format!("request is not JSON: {e}")))?;
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or(("bad_request", "request has no protocol version".to_string()))?;
    if version != u64::from(PROTOCOL_VERSION) {
        return Err((
            "protocol_mismatch",
            format!(
                "the host speaks protocol {version} but banger-agent {} in the guest speaks protocol {PROTOCOL_VERSION}: \
                 rebuild the image with a matching agent",
                env!("CARGO_PKG_VERSION"),
            ),
        ));
    }
    let envelope: Envelope = serde_json::from_value(value)
        .map_err(|e| ("bad_request", format!("unsupported request: {e}")))?;
    Ok(envelope.request)
}

fn health() -> HealthResponse {
    HealthResponse {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL_VERSION,
        hostname: rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
        uptime_ms: crate::console::uptime().map_or(0, |up| up.as_millis() as u64),
    }
}

/// Writes one `Response` frame and closes the stream.
async fn respond<W: AsyncWrite + Unpin, T: serde::Serialize>(
    w: &mut W,
    body: &T,
) -> io::Result<()> {
    banger_proto::write_frame(w, &Frame::json(FrameKind::Response, body)).await?;
    w.shutdown().await
}

/// Writes one `Error` frame.
pub async fn write_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: &str,
    message: String,
) -> io::Result<()> {
    banger_proto::write_frame(
        w,
        &Frame::json(
            FrameKind::Error,
            &ErrorBody {
                code: code.into(),
                message,
            },
        ),
    )
    .await
}

#[cfg(test)]
#[path = "channel_tests.rs"]
pub(crate) mod tests;
