//! `attach` and `logs` on one stream: a session's output from an offset,
//! then (attach, or logs with follow) live output until the session ends or
//! the host closes the stream, and for attach the host's input. Owns the
//! per-stream choreography of a reader; owns nothing of the session's life:
//! a reader that goes away leaves the process alone.

use std::io;
use std::sync::Arc;

use banger_proto::{Frame, FrameKind};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::session::{Chunk, Session};

/// How far a reader goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The output produced by the time of the request.
    Now,
    /// The end of the session (then an `Exit` frame).
    End,
}

/// Attach: the `Response` frame, output from `from`, live output and the
/// exit; the host's `Stdin`/`StdinEof` frames feed the session meanwhile.
/// Returns when the session ended or the host closed its side (detach).
pub async fn attach<R, W>(session: Arc<Session>, from: Option<u64>, mut input: R, mut output: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let feed = async {
        while let Ok(Some(frame)) = banger_proto::read_frame(&mut input).await {
            match frame.kind {
                FrameKind::Stdin => session.write_stdin(&frame.payload).await,
                FrameKind::StdinEof => session.close_stdin().await,
                _ => {}
            }
        }
    };
    tokio::select! {
        _ = feed => {}
        _ = send(&session, from, Until::End, &mut output) => {}
    }
}

/// Logs: the `Response` frame, then output from `from` up to now, or with
/// `follow` up to the session's end. With `follow`, the host closing its
/// side ends it early.
pub async fn logs<R, W>(
    session: Arc<Session>,
    from: Option<u64>,
    follow: bool,
    mut input: R,
    mut output: W,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !follow {
        let _ = send(&session, from, Until::Now, &mut output).await;
        return;
    }
    let hang_up = async { while let Ok(Some(_)) = banger_proto::read_frame(&mut input).await {} };
    tokio::select! {
        _ = hang_up => {}
        _ = send(&session, from, Until::End, &mut output) => {}
    }
}

/// Writes the `Response` frame, the output, maybe the `Exit` frame, and
/// closes the stream.
async fn send<W: AsyncWrite + Unpin>(
    session: &Session,
    from: Option<u64>,
    until: Until,
    output: &mut W,
) -> io::Result<()> {
    // Subscribed before the first read, so no change after it is missed.
    let mut changes = session.subscribe();
    let info = session.info();
    banger_proto::write_frame(output, &Frame::json(FrameKind::Response, &info)).await?;
    let mut cursor = from.unwrap_or(info.retained_from);
    loop {
        if until == Until::Now && cursor >= info.output_bytes {
            break;
        }
        match session.read(cursor) {
            Chunk::Data { from, mut bytes } => {
                if until == Until::Now {
                    bytes.truncate(info.output_bytes.saturating_sub(from) as usize);
                }
                if bytes.is_empty() {
                    break;
                }
                cursor = from + bytes.len() as u64;
                banger_proto::write_frame(output, &Frame::new(FrameKind::Stdout, bytes)).await?;
            }
            Chunk::Pending if until == Until::End => Session::changed(&mut changes).await,
            Chunk::Pending | Chunk::Ended(None) => break,
            Chunk::Ended(Some(status)) => {
                if until == Until::End {
                    banger_proto::write_frame(output, &Frame::json(FrameKind::Exit, &status))
                        .await?;
                }
                break;
            }
        }
    }
    output.shutdown().await
}
