//! `vm run` inside a git checkout: the checkout, as it is on disk (tracked
//! files plus untracked ones git does not ignore, so uncommitted work comes
//! along and build output does not), is copied to `/root/repo` in the guest
//! before the command runs there.
//!
//! 1. `git ls-files -z --cached --others --exclude-standard` names the files;
//!    files deleted from the work tree are dropped.
//! 2. The host's `tar` streams them; the stream is the stdin of a guest
//!    `tar -x` through the ordinary exec channel (no extra protocol).
//! 3. The command then runs with `/root/repo` (plus the caller's path inside
//!    the checkout) as its working directory.

use anyhow::{Context as _, bail};
use banger_proto::ExecRequest;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::exec::{ExecEnd, session};
use crate::client::Client;

/// Where the checkout lands in the guest.
pub const GUEST_DIR: &str = "/root/repo";

pub struct Checkout {
    pub top: PathBuf,
    /// Paths relative to `top`.
    pub files: Vec<PathBuf>,
    /// The caller's directory relative to `top`.
    pub subdir: PathBuf,
}

/// The git checkout around the current directory, if there is one (and git).
pub fn find() -> Option<Checkout> {
    let cwd = std::env::current_dir().ok()?;
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let top = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let list = std::process::Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&top)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !list.status.success() {
        return None;
    }
    let files = parse_file_list(&list.stdout, &top);
    let subdir = cwd
        .canonicalize()
        .ok()?
        .strip_prefix(top.canonicalize().ok()?)
        .ok()?
        .to_path_buf();
    Some(Checkout { top, files, subdir })
}

/// NUL-separated paths, deduplicated, keeping only those still on disk.
pub fn parse_file_list(raw: &[u8], top: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = raw
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .filter(|p| top.join(p).symlink_metadata().is_ok())
        .collect();
    files.sort();
    files.dedup();
    files
}

/// The guest working directory for a caller at `subdir` of the checkout.
pub fn guest_cwd(subdir: &Path) -> String {
    if subdir.as_os_str().is_empty() {
        return GUEST_DIR.to_string();
    }
    Path::new(GUEST_DIR)
        .join(subdir)
        .to_string_lossy()
        .into_owned()
}

/// Copies the checkout into the VM (replacing an earlier copy).
pub async fn copy_in(client: &Client, vm: &str, checkout: &Checkout) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut tar = tokio::process::Command::new("tar")
        .args(["--null", "--no-recursion", "-T", "-", "-cf", "-"])
        .current_dir(&checkout.top)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run tar to copy the checkout (install tar)")?;
    let mut list = tar.stdin.take().expect("piped");
    let names: Vec<u8> = checkout
        .files
        .iter()
        .flat_map(|f| {
            f.to_string_lossy()
                .into_owned()
                .into_bytes()
                .into_iter()
                .chain([0])
        })
        .collect();
    let feeder = tokio::spawn(async move {
        let _ = list.write_all(&names).await;
    });
    let archive = tar.stdout.take().expect("piped");
    let script =
        format!("rm -rf {GUEST_DIR} && mkdir -p {GUEST_DIR} && tar -x -f - -C {GUEST_DIR}");
    let request = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script],
        cwd: Some("/root".into()),
        ..Default::default()
    };
    let stream = client.exec(vm, &request).await?;
    let (_control_tx, control_rx) = mpsc::channel(1);
    let end = session(
        stream,
        archive,
        tokio::io::sink(),
        tokio::io::stderr(),
        control_rx,
    )
    .await?;
    let _ = feeder.await;
    let status = tar.wait().await?;
    match end {
        ExecEnd::Exited(s) if s.code == 0 && status.success() => {}
        ExecEnd::Exited(s) => bail!(
            "copying {} into the guest failed (guest tar exited {}, host tar {status})",
            checkout.top.display(),
            s.code
        ),
        ExecEnd::Refused(e) => bail!(
            "copying {} into the guest failed: {}",
            checkout.top.display(),
            e.message
        ),
    }
    eprintln!(
        "  copied {} ({} files) to {GUEST_DIR} ({} ms)",
        checkout.top.display(),
        checkout.files.len(),
        t0.elapsed().as_millis()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_list_drops_deleted_and_duplicate_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/b.rs"), "b").unwrap();
        let files = parse_file_list(b"src/b.rs\0a.txt\0gone.txt\0a.txt\0", dir.path());
        assert_eq!(
            files,
            vec![PathBuf::from("a.txt"), PathBuf::from("src/b.rs")]
        );
    }

    #[test]
    fn the_guest_cwd_follows_the_callers_subdirectory() {
        assert_eq!(guest_cwd(Path::new("")), "/root/repo");
        assert_eq!(guest_cwd(Path::new("crates/x")), "/root/repo/crates/x");
    }
}
