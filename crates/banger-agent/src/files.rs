//! The `unpack` and `pack` requests: files and trees in and out of the
//! guest as a `banger_proto::archive` stream, without a tar or busybox
//! process. Owns the per-stream choreography and the error codes; the file
//! work and its path safety are `banger_sys::archive`'s, run on blocking
//! threads so a large copy never stalls the agent's other streams.
//!
//! `unpack`, after the request frame:
//!
//! 1. Check `dest` (absolute, no `..`, no NUL) and open its parent; failure
//!    is one `Error` frame (`bad_request`, `not_found`).
//! 2. Each `Stdin` frame is fed to the unpacker. The first failure is
//!    answered at once with an `Error` frame (`bad_request` when the
//!    archive is at fault, `io` when the disk is) and the stream is closed;
//!    the host should read while it writes, so it stops sending.
//! 3. `StdinEof`: the unpacker swaps the complete tree in; one `Response`
//!    frame with the [`ArchiveStats`].
//! 4. The stream ending before `StdinEof` leaves `dest` as it was.
//!
//! `pack`: check `path`, then `Stdout` frames of the archive, then one
//! `Response` frame with the [`ArchiveStats`]; or an `Error` frame
//! (`not_found` before any data when `path` does not exist).

use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use banger_proto::{ArchiveStats, Frame, FrameKind, PackRequest, UnpackRequest};
use banger_sys::archive::{ArchiveError, Stats, Unpacker};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::console::chain;

/// Largest payload of a `Stdout` frame of a pack.
pub const PACK_FRAME: usize = 128 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("guest path {path:?} must be absolute, without `..` and without NUL")]
    BadPath { path: String },
    #[error("unexpected {kind:?} frame in an archive stream")]
    UnexpectedFrame { kind: FrameKind },
    #[error("the host closed the stream before the end of the archive")]
    HostGone,
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("the archive's worker thread failed")]
    Worker {
        #[source]
        source: tokio::task::JoinError,
    },
}

impl FilesError {
    /// The `ErrorBody` code the host sees.
    pub fn code(&self) -> &'static str {
        match self {
            FilesError::BadPath { .. } | FilesError::UnexpectedFrame { .. } => "bad_request",
            FilesError::Archive(ArchiveError::NotFound { .. })
            | FilesError::Archive(ArchiveError::ParentMissing { .. }) => "not_found",
            FilesError::Archive(e) if e.is_bad_archive() => "bad_request",
            FilesError::Archive(ArchiveError::NoName { .. }) => "bad_request",
            _ => "io",
        }
    }
}

/// Runs one `unpack` request; `input` and `output` are its stream's halves,
/// positioned after the request frame.
pub async fn unpack<R, W>(req: UnpackRequest, mut input: R, mut output: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let result = receive(&req.dest, &mut input).await;
    let _ = match result {
        Ok(stats) => answer(&mut output, &stats.to_wire()).await,
        Err(FilesError::HostGone) => return,
        Err(e) => fail(&mut output, &e).await,
    };
}

async fn receive<R: AsyncRead + Unpin>(dest: &str, input: &mut R) -> Result<Stats, FilesError> {
    let dest = guest_path(dest)?;
    let mut unpacker = blocking(move || Unpacker::begin(&dest)).await?;
    loop {
        let frame = match banger_proto::read_frame(input).await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => {
                // Removing the partial tree may take a while: not on the runtime.
                tokio::task::spawn_blocking(move || unpacker.abort());
                return Err(FilesError::HostGone);
            }
        };
        match frame.kind {
            FrameKind::Stdin => {
                unpacker = blocking(move || {
                    unpacker.feed(&frame.payload)?;
                    Ok(unpacker)
                })
                .await?;
            }
            FrameKind::StdinEof => return blocking(move || unpacker.finish()).await,
            kind => {
                tokio::task::spawn_blocking(move || unpacker.abort());
                return Err(FilesError::UnexpectedFrame { kind });
            }
        }
    }
}

/// Runs one `pack` request on its stream's output half.
pub async fn pack<W: AsyncWrite + Unpin>(req: PackRequest, mut output: W) {
    let path = match guest_path(&req.path) {
        Ok(path) => path,
        Err(e) => {
            let _ = fail(&mut output, &e).await;
            return;
        }
    };
    let (tx, mut chunks) = mpsc::channel::<Vec<u8>>(4);
    let worker = tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            tx,
            buf: Vec::with_capacity(PACK_FRAME),
        };
        banger_sys::archive::pack(&path, &mut out)
    });
    while let Some(chunk) = chunks.recv().await {
        let frame = Frame::new(FrameKind::Stdout, chunk);
        if banger_proto::write_frame(&mut output, &frame)
            .await
            .is_err()
        {
            // The host is gone; the worker's next send fails and it stops.
            return;
        }
    }
    let result = match worker.await {
        Ok(result) => result.map_err(FilesError::from),
        Err(source) => Err(FilesError::Worker { source }),
    };
    let _ = match result {
        Ok(stats) => answer(&mut output, &stats.to_wire()).await,
        Err(e) => fail(&mut output, &e).await,
    };
}

/// An absolute guest path without `..` or NUL.
fn guest_path(path: &str) -> Result<PathBuf, FilesError> {
    let p = Path::new(path);
    let ok = p.is_absolute()
        && !path.contains('\0')
        && p.components().all(|c| c != Component::ParentDir);
    if ok {
        Ok(p.to_path_buf())
    } else {
        Err(FilesError::BadPath { path: path.into() })
    }
}

/// Runs `work` on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Result<T, FilesError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => Ok(result?),
        Err(source) => Err(FilesError::Worker { source }),
    }
}

async fn answer<W: AsyncWrite + Unpin>(output: &mut W, stats: &ArchiveStats) -> io::Result<()> {
    banger_proto::write_frame(output, &Frame::json(FrameKind::Response, stats)).await?;
    output.shutdown().await
}

async fn fail<W: AsyncWrite + Unpin>(output: &mut W, e: &FilesError) -> io::Result<()> {
    crate::channel::write_error(output, e.code(), chain(e)).await?;
    output.shutdown().await
}

/// The archive writer of a pack: hands [`PACK_FRAME`]-sized chunks to the
/// task that turns them into frames.
struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(PACK_FRAME));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(PACK_FRAME - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == PACK_FRAME {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

#[cfg(test)]
#[path = "files_tests.rs"]
mod tests;
