//! The daemon's side of the agent channel: the sync handshake and a yamux
//! client session over whatever byte stream the engine hands us, plus typed
//! calls (health, shutdown) and raw streams for exec. The protocol itself is
//! described in `banger_proto`.
//!
//! 1. [`AgentConn::handshake`] writes the sync line and reads (byte by byte,
//!    so nothing past the ready line is swallowed) until the ready line with
//!    our nonce; stale bytes from an earlier connection are skipped.
//! 2. A driver task owns the yamux connection: it opens outbound streams on
//!    request and keeps polling for inbound activity, which is what moves
//!    data on every stream.
//! 3. When the channel closes (guest powered off, engine gone), the driver
//!    ends, pending and future opens fail, and [`AgentConn::is_closed`] says so.

pub mod files;
pub mod run;

pub use files::TransferError;
pub use run::RunOutput;

use banger_proto::{Envelope, Frame, FrameKind, HealthResponse, PROTOCOL_VERSION, Request};
use futures::channel::oneshot;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

pub type AgentStream = Compat<yamux::Stream>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent channel i/o failed")]
    Io(#[from] std::io::Error),
    #[error(
        "the guest agent speaks protocol {agent}, this banger speaks {ours}: rebuild the image with `banger image build --force`"
    )]
    ProtocolMismatch { agent: u32, ours: u32 },
    #[error("the agent channel closed")]
    Closed,
    #[error("cannot open a stream to the agent: {0}")]
    Open(String),
    #[error("the agent answered {code}: {message}")]
    Remote { code: String, message: String },
    #[error("the agent answered with an unexpected {0:?} frame")]
    Unexpected(FrameKind),
    #[error("the guest command printed more than {limit} bytes")]
    TooMuchOutput { limit: usize },
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, String>>;

/// A live session with one guest's agent.
pub struct AgentConn {
    open_tx: mpsc::UnboundedSender<OpenReply>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl AgentConn {
    /// Synchronises with the agent on `io` and starts the session.
    pub async fn handshake<S>(mut io: S) -> Result<AgentConn, AgentError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let nonce = format!("{:016x}", rand::random::<u64>());
        io.write_all(banger_proto::sync_line(&nonce).as_bytes())
            .await?;
        io.flush().await?;
        let mut line = Vec::new();
        loop {
            let b = io.read_u8().await?;
            if b != b'\n' {
                line.push(b);
                if line.len() > 4096 {
                    line.clear(); // stale stream data, not a line we care about
                }
                continue;
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            line.clear();
            tracing::debug!(line = %text.chars().take(120).collect::<String>(), "agent channel line");
            // Stale data may precede the line on the same "line": look at its tail.
            let Some(start) = text.find("BANGER-READY ") else {
                continue;
            };
            if let Some((got, proto)) = banger_proto::parse_ready(&text[start..]) {
                if got != nonce {
                    continue;
                }
                if proto != PROTOCOL_VERSION {
                    return Err(AgentError::ProtocolMismatch {
                        agent: proto,
                        ours: PROTOCOL_VERSION,
                    });
                }
                break;
            }
        }
        let (open_tx, open_rx) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        let conn =
            yamux::Connection::new(io.compat(), yamux::Config::default(), yamux::Mode::Client);
        tokio::spawn(drive(conn, open_rx, closed.clone()));
        Ok(AgentConn { open_tx, closed })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Takes the session for dead: the next user connects afresh.
    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Opens a new stream (one request).
    pub async fn open(&self) -> Result<AgentStream, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.open_tx.send(tx).map_err(|_| AgentError::Closed)?;
        match rx.await {
            Ok(Ok(s)) => Ok(s.compat()),
            Ok(Err(e)) => Err(AgentError::Open(e)),
            Err(_) => Err(AgentError::Closed),
        }
    }

    /// Opens a stream and sends `request` as its first frame.
    pub async fn request(&self, request: Request) -> Result<AgentStream, AgentError> {
        let mut s = self.open().await?;
        banger_proto::write_frame(
            &mut s,
            &Frame::json(FrameKind::Request, &Envelope::new(request)),
        )
        .await?;
        Ok(s)
    }

    pub async fn health(&self) -> Result<HealthResponse, AgentError> {
        let mut s = self.request(Request::Health).await?;
        let frame = banger_proto::read_frame(&mut s)
            .await?
            .ok_or(AgentError::Closed)?;
        expect_response(frame)
    }

    /// Gives a restored guest its identity (see `capability/identity.rs`).
    pub async fn identity(
        &self,
        req: banger_proto::IdentityRequest,
    ) -> Result<banger_proto::IdentityReport, AgentError> {
        let mut s = self.request(Request::Identity(req)).await?;
        let frame = tokio::time::timeout(Duration::from_secs(30), banger_proto::read_frame(&mut s))
            .await
            .map_err(|_| AgentError::Closed)??
            .ok_or(AgentError::Closed)?;
        expect_response(frame)
    }

    /// Asks the guest to power off (or reboot); returns once the agent accepted.
    pub async fn shutdown(&self, reboot: bool) -> Result<(), AgentError> {
        let mut s = self.request(Request::Shutdown { reboot }).await?;
        let frame = tokio::time::timeout(Duration::from_secs(5), banger_proto::read_frame(&mut s))
            .await
            .map_err(|_| AgentError::Closed)??
            .ok_or(AgentError::Closed)?;
        let _: serde_json::Value = expect_response(frame)?;
        Ok(())
    }
}

pub(crate) fn expect_response<T: for<'de> serde::Deserialize<'de>>(
    frame: Frame,
) -> Result<T, AgentError> {
    match frame.kind {
        FrameKind::Response => Ok(frame.parse()?),
        FrameKind::Error => {
            let e: banger_proto::ErrorBody = frame.parse()?;
            Err(AgentError::Remote {
                code: e.code,
                message: e.message,
            })
        }
        other => Err(AgentError::Unexpected(other)),
    }
}

async fn drive<T>(
    mut conn: yamux::Connection<T>,
    mut open_rx: mpsc::UnboundedReceiver<OpenReply>,
    closed: Arc<AtomicBool>,
) where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut waiting: VecDeque<OpenReply> = VecDeque::new();
    let mut handle_open = true;
    let reason = std::future::poll_fn(|cx| {
        while handle_open {
            match open_rx.poll_recv(cx) {
                Poll::Ready(Some(tx)) => waiting.push_back(tx),
                Poll::Ready(None) => handle_open = false,
                Poll::Pending => break,
            }
        }
        while !waiting.is_empty() {
            match conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    let _ = waiting.pop_front().expect("non-empty").send(Ok(stream));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(e.to_string()),
                Poll::Pending => break,
            }
        }
        loop {
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => drop(stream), // the agent never opens streams
                Poll::Ready(Some(Err(e))) => return Poll::Ready(e.to_string()),
                Poll::Ready(None) => return Poll::Ready("closed".to_string()),
                Poll::Pending => break,
            }
        }
        if !handle_open && waiting.is_empty() {
            // Nobody can ask for streams any more; keep serving open ones
            // until the connection itself ends.
        }
        Poll::Pending
    })
    .await;
    closed.store(true, Ordering::SeqCst);
    for tx in waiting {
        let _ = tx.send(Err(reason.clone()));
    }
    tracing::debug!(%reason, "agent session ended");
}
