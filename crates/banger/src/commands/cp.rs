//! `banger vm cp [-r] SRC DST`: files and trees between the host and a VM,
//! modes and symlinks kept, through the agent's archive requests. This
//! client reads and writes the host side (as the user running it); what
//! arrives from the guest is validated by the unpacker before anything is
//! written, and lands only once complete.
//!
//! `VM:PATH` names a guest path (relative ones and `~/` are under /root).
//! A destination ending in `/` gets the source's name appended. On a
//! terminal the copy shows its bytes and rate as it goes (of the total
//! when sending, which the host side knows).

use anyhow::{Context as _, anyhow, bail};
use banger_proto::archive::ArchiveStats;
use banger_proto::chunks::ChunkWriter;
use banger_proto::{ErrorBody, Frame, FrameKind, read_frame, write_frame};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

use super::Context;
use crate::cli::CpArgs;
use crate::progress::Style;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Host(PathBuf),
    Guest { vm: String, path: String },
}

/// Parses `VM:PATH` (a valid vm name before the colon) or a host path.
pub fn place(arg: &str) -> Place {
    if let Some((vm, path)) = arg.split_once(':')
        && banger_api::validate_vm_name(vm).is_ok()
    {
        let path = if let Some(rest) = path.strip_prefix("~/") {
            format!("/root/{rest}")
        } else if path == "~" || path.is_empty() {
            "/root".to_string()
        } else if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/root/{path}")
        };
        return Place::Guest {
            vm: vm.to_string(),
            path,
        };
    }
    Place::Host(PathBuf::from(arg))
}

fn base_name(path: &str) -> anyhow::Result<&str> {
    Path::new(path.trim_end_matches('/'))
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{path:?} has no file name to copy under"))
}

pub async fn run(ctx: &Context, args: CpArgs) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    match (place(&args.src), place(&args.dst)) {
        (Place::Host(src), Place::Guest { vm, path }) => {
            let meta = std::fs::symlink_metadata(&src)
                .with_context(|| format!("cannot read {}", src.display()))?;
            if meta.is_dir() && !args.recursive {
                bail!("{} is a directory: pass -r to copy it", src.display());
            }
            let dest = if path.ends_with('/') {
                format!("{path}{}", base_name(&src.to_string_lossy())?)
            } else {
                path
            };
            let stream = client.unpack(&vm, &dest).await?;
            let bar = meter(|| Some(tree_bytes(&src)));
            let stats = send(stream, src, &bar).await;
            bar.finish_and_clear();
            let stats = unless_daemon_died(&client, stats).await?;
            eprintln!("copied {} to {vm}:{dest}", describe(&stats));
        }
        (Place::Guest { vm, path }, Place::Host(dst)) => {
            let dst_is_dir = dst.is_dir() || args.dst.ends_with('/');
            let dest = if dst_is_dir {
                dst.join(base_name(&path)?)
            } else {
                dst
            };
            let stream = client.pack(&vm, &path).await?;
            let bar = meter(|| None);
            let stats = receive(stream, &dest, args.recursive, &bar).await;
            bar.finish_and_clear();
            let stats = unless_daemon_died(&client, stats).await?;
            eprintln!("copied {} to {}", describe(&stats), dest.display());
        }
        (Place::Host(_), Place::Host(_)) => bail!("one side must be VM:PATH (both are host paths)"),
        (Place::Guest { .. }, Place::Guest { .. }) => {
            bail!("copying between two VMs is not supported: copy through the host")
        }
    }
    Ok(0)
}

/// A copy's end, unless it broke because the daemon died under it: then
/// what that means for the copy.
async fn unless_daemon_died(
    client: &crate::client::Client,
    stats: anyhow::Result<ArchiveStats>,
) -> anyhow::Result<ArchiveStats> {
    match stats {
        Err(_) if client.daemon_gone().await => bail!(
            "the daemon stopped during the copy (see `banger daemon status`), so it may not have \
             finished: a copy lands whole or not at all; run it again"
        ),
        stats => stats,
    }
}

/// A live byte count for a copy of `total()` bytes (if known) on a
/// terminal; hidden, and the total not worked out, otherwise.
fn meter(total: impl FnOnce() -> Option<u64>) -> ProgressBar {
    if !matches!(Style::for_stderr(), Style::Live) {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total() {
        Some(total) => (
            ProgressBar::new(total),
            "  copying {bytes} of {total_bytes} ({bytes_per_sec}, {eta} left)",
        ),
        None => (
            ProgressBar::new_spinner(),
            "  copying {bytes} ({bytes_per_sec})",
        ),
    };
    bar.set_style(ProgressStyle::with_template(template).expect("a valid template"));
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    bar
}

/// Counts `n` more bytes on `bar`, never past its total (the archive's
/// headers come on top of the files' bytes).
fn count(bar: &ProgressBar, n: usize) {
    let at = bar.position().saturating_add(n as u64);
    bar.set_position(bar.length().map_or(at, |total| at.min(total)));
}

/// The bytes of the regular files under `path` (itself included), not
/// following symlinks: what a copy of it sends, near enough.
fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

fn describe(s: &ArchiveStats) -> String {
    format!(
        "{} files, {} dirs, {} symlinks ({})",
        s.files,
        s.dirs,
        s.symlinks,
        crate::units::format_bytes(s.bytes)
    )
}

fn refused(frame: &Frame) -> anyhow::Error {
    match frame.parse::<ErrorBody>() {
        Ok(e) => anyhow!("{}", e.message),
        Err(e) => anyhow!("the guest answered with a bad error: {e}"),
    }
}

/// Streams the archive of `src` as `Stdin` frames, then reads the answer.
async fn send<S>(stream: S, src: PathBuf, bar: &ProgressBar) -> anyhow::Result<ArchiveStats>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter::new(tx, 512 << 10);
        banger_sys::archive::pack(&src, &mut w).map_err(|e| anyhow!(e))?;
        std::io::Write::flush(&mut w)?;
        anyhow::Ok(())
    });
    while let Some(chunk) = rx.recv().await {
        let n = chunk.len();
        write_frame(&mut writer, &Frame::new(FrameKind::Stdin, chunk))
            .await
            .context("lost the connection to the guest")?;
        count(bar, n);
    }
    producer.await??;
    write_frame(&mut writer, &Frame::new(FrameKind::StdinEof, [])).await?;
    let frame = read_frame(&mut reader)
        .await?
        .ok_or_else(|| anyhow!("the guest agent closed the stream"))?;
    match frame.kind {
        FrameKind::Response => Ok(frame.parse()?),
        FrameKind::Error => Err(refused(&frame)),
        other => Err(anyhow!("the guest answered {other:?}")),
    }
}

/// Reads the archive of a guest path into `dest` (swapped in when complete).
async fn receive<S>(
    stream: S,
    dest: &Path,
    recursive: bool,
    bar: &ProgressBar,
) -> anyhow::Result<ArchiveStats>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut reader, _writer) = tokio::io::split(stream);
    let mut unpacker: Option<banger_sys::archive::Unpacker> = None;
    let mut first = true;
    loop {
        let frame = read_frame(&mut reader)
            .await?
            .ok_or_else(|| anyhow!("the guest agent closed the stream before the end"))?;
        match frame.kind {
            FrameKind::Stdout => {
                // The root entry's kind is the first byte: a directory is 1.
                if first && !recursive && frame.payload.first() == Some(&1) {
                    bail!("the guest path is a directory: pass -r to copy it");
                }
                first = false;
                if unpacker.is_none() {
                    unpacker = Some(
                        banger_sys::archive::Unpacker::begin(dest)
                            .with_context(|| format!("cannot write {}", dest.display()))?,
                    );
                }
                count(bar, frame.payload.len());
                unpacker
                    .as_mut()
                    .expect("made above")
                    .feed(&frame.payload)
                    .with_context(|| {
                        format!("refused what the guest sent for {}", dest.display())
                    })?;
            }
            FrameKind::Response => {
                let u = unpacker.ok_or_else(|| anyhow!("the guest sent an empty archive"))?;
                let stats = u
                    .finish()
                    .with_context(|| format!("cannot write {}", dest.display()))?;
                return Ok(stats.to_wire());
            }
            FrameKind::Error => return Err(refused(&frame)),
            other => bail!("the guest answered {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trees_bytes_are_its_files_not_what_its_links_point_at() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a"), vec![0u8; 1000]).unwrap();
        std::fs::write(root.join("sub/b"), vec![0u8; 24]).unwrap();
        std::fs::write(dir.path().join("outside"), vec![0u8; 5000]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link")).unwrap();
        assert_eq!(tree_bytes(&root), 1024);
        assert_eq!(tree_bytes(&root.join("a")), 1000);
        assert_eq!(tree_bytes(&dir.path().join("missing")), 0);
    }

    #[test]
    fn the_count_stops_at_the_total() {
        let bar = ProgressBar::hidden();
        bar.set_length(100);
        count(&bar, 60);
        assert_eq!(bar.position(), 60);
        count(&bar, 60);
        assert_eq!(
            bar.position(),
            100,
            "archive headers do not count past the total"
        );
        let open = ProgressBar::hidden();
        count(&open, 70);
        count(&open, 70);
        assert_eq!(open.position(), 140);
    }

    #[test]
    fn places_parse() {
        assert_eq!(
            place("api:/root/x"),
            Place::Guest {
                vm: "api".into(),
                path: "/root/x".into()
            }
        );
        assert_eq!(
            place("api:data.csv"),
            Place::Guest {
                vm: "api".into(),
                path: "/root/data.csv".into()
            }
        );
        assert_eq!(
            place("api:~/out/"),
            Place::Guest {
                vm: "api".into(),
                path: "/root/out/".into()
            }
        );
        assert_eq!(place("./data.csv"), Place::Host("./data.csv".into()));
        assert_eq!(place("C:/x"), Place::Host("C:/x".into()));
        assert_eq!(place("/tmp/a:b"), Place::Host("/tmp/a:b".into()));
    }
}
