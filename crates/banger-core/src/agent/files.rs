//! Moving files into the guest: an archive (`banger_proto::archive`)
//! written on a blocking thread by whatever produces it (a workspace, a
//! synced file) and streamed to the agent's `unpack`, which swaps it in at
//! the destination only once complete. A producer that fails mid-way just
//! drops the stream: the guest keeps what it had.
//!
//! 1. A `Request::Unpack` frame opens the stream.
//! 2. Archive bytes follow as `Stdin` frames of at most `MAX_FRAME`.
//! 3. `StdinEof` ends them; the agent answers `Response` with
//!    [`ArchiveStats`], or `Error` (then nothing changed in the guest).

use super::{AgentConn, AgentError};
use banger_proto::archive::{ArchiveStats, Encoder};
use banger_proto::chunks::ChunkWriter;
use banger_proto::{Frame, FrameKind, Request, UnpackRequest};
use std::io::Write;
use std::path::Path;
use tokio::sync::mpsc;

/// Why a transfer into the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The producer failed (a host file unreadable, say).
    #[error("{0}")]
    Source(String),
}

impl AgentConn {
    /// Unpacks at `dest` in the guest the archive `produce` writes (on a
    /// blocking thread); `sent` sees the bytes sent so far.
    pub async fn unpack_from<F, E>(
        &self,
        dest: &str,
        produce: F,
        mut sent: impl FnMut(u64),
    ) -> Result<ArchiveStats, TransferError>
    where
        F: FnOnce(&mut dyn Write) -> Result<(), E> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let mut s = self
            .request(Request::Unpack(UnpackRequest { dest: dest.into() }))
            .await?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let producer = tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter::new(tx, banger_proto::MAX_FRAME / 2);
            let result = produce(&mut w).map_err(|e| e.to_string());
            result.and_then(|()| w.flush().map_err(|e| e.to_string()))
        });
        let mut total = 0u64;
        while let Some(chunk) = rx.recv().await {
            for piece in chunk.chunks(banger_proto::MAX_FRAME) {
                banger_proto::write_frame(&mut s, &Frame::new(FrameKind::Stdin, piece))
                    .await
                    .map_err(AgentError::from)?;
            }
            total += chunk.len() as u64;
            sent(total);
        }
        match producer.await {
            Ok(Ok(())) => {}
            // Dropping the stream without StdinEof: the guest keeps its copy.
            Ok(Err(e)) => return Err(TransferError::Source(e)),
            Err(e) => {
                return Err(TransferError::Source(format!(
                    "the archive writer failed: {e}"
                )));
            }
        }
        banger_proto::write_frame(&mut s, &Frame::new(FrameKind::StdinEof, []))
            .await
            .map_err(AgentError::from)?;
        let frame = banger_proto::read_frame(&mut s)
            .await
            .map_err(AgentError::from)?
            .ok_or(AgentError::Closed)?;
        Ok(super::expect_response(frame)?)
    }

    /// Copies the host file or tree at `host` to `guest` (its parent made
    /// first); a file gets `mode` when given.
    pub async fn put_path(
        &self,
        host: &Path,
        guest: &str,
        mode: Option<u32>,
    ) -> Result<ArchiveStats, TransferError> {
        if let Some(parent) = Path::new(guest).parent().and_then(|p| p.to_str()) {
            let out = self
                .run(&["mkdir", "-p", "--", parent], None, &[], 4096)
                .await?;
            if out.code != 0 {
                return Err(TransferError::Source(format!(
                    "cannot make {parent} in the guest: {}",
                    out.stderr_tail()
                )));
            }
        }
        let host = host.to_owned();
        self.unpack_from(
            guest,
            move |out: &mut dyn Write| -> Result<(), String> {
                let meta = std::fs::metadata(&host)
                    .map_err(|e| format!("cannot read {}: {e}", host.display()))?;
                if meta.is_dir() {
                    let mut out = out;
                    banger_sys::archive::pack(&host, &mut out).map_err(|e| e.to_string())?;
                    return Ok(());
                }
                let content = std::fs::read(&host)
                    .map_err(|e| format!("cannot read {}: {e}", host.display()))?;
                use std::os::unix::fs::{MetadataExt, PermissionsExt};
                let mode = mode.unwrap_or(meta.permissions().mode() & 0o7777);
                let mut enc = Encoder::new(out);
                let fail = |e: banger_proto::archive::ArchiveError| e.to_string();
                enc.file(b"", mode, meta.mtime(), content.len() as u64)
                    .map_err(fail)?;
                enc.data(&content).map_err(fail)?;
                enc.end().map_err(fail)?;
                Ok(())
            },
            |_| {},
        )
        .await
    }
}
