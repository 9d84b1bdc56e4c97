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
use banger_sys::command::{Cmd, Runner};
use banger_sys::spawn::{Child, SpawnOptions, Spawner, Stdio};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::sync::mpsc;

use super::exec::{ExecEnd, session};
use crate::client::Client;

/// Where the checkout lands in the guest.
pub const GUEST_DIR: &str = "/root/repo";

#[derive(Debug, PartialEq)]
pub struct Checkout {
    pub top: PathBuf,
    /// Paths relative to `top`.
    pub files: Vec<PathBuf>,
    /// The caller's directory relative to `top`.
    pub subdir: PathBuf,
}

/// The git checkout around the current directory, if there is one (and git).
pub fn find(runner: &dyn Runner) -> Option<Checkout> {
    find_from(runner, &std::env::current_dir().ok()?)
}

fn find_from(runner: &dyn Runner, cwd: &Path) -> Option<Checkout> {
    let out = runner
        .run(
            &Cmd::new("git")
                .args(["rev-parse", "--show-toplevel"])
                .cwd(cwd),
        )
        .ok()?;
    let top = PathBuf::from(out.stdout_lossy().trim());
    let list = runner
        .run(
            &Cmd::new("git")
                .args([
                    "ls-files",
                    "-z",
                    "--cached",
                    "--others",
                    "--exclude-standard",
                ])
                .cwd(&top),
        )
        .ok()?;
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
pub async fn copy_in(
    client: &Client,
    spawner: &dyn Spawner,
    vm: &str,
    checkout: &Checkout,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut tar = start_tar(spawner, checkout)?;
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

/// The host `tar` writing the checkout's files, named on its stdin, as an
/// archive on its stdout.
fn start_tar(spawner: &dyn Spawner, checkout: &Checkout) -> anyhow::Result<Child> {
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
    let cmd = Cmd::new("tar")
        .args(["--null", "--no-recursion", "-T", "-", "-cf", "-"])
        .cwd(&checkout.top)
        .stdin(names);
    let opts = SpawnOptions {
        stdout: Stdio::Piped,
        stderr: Stdio::Inherit,
        ..SpawnOptions::default()
    };
    spawner
        .spawn(&cmd, &opts)
        .context("cannot run tar to copy the checkout (install tar)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_sys::command::{CommandError, Output};
    use banger_sys::spawn::RecordingSpawner;
    use std::sync::Mutex;
    use tokio::io::AsyncReadExt;

    /// Answers `git rev-parse` with `top` (or fails, outside a checkout)
    /// and `git ls-files` with `listing`; records each call with its cwd.
    struct FakeGit {
        top: Option<PathBuf>,
        listing: &'static [u8],
        calls: Mutex<Vec<(String, Option<PathBuf>)>>,
    }

    impl Runner for FakeGit {
        fn run(&self, cmd: &Cmd) -> Result<Output, CommandError> {
            let rendered = cmd.to_string();
            self.calls
                .lock()
                .unwrap()
                .push((rendered.clone(), cmd.cwd.clone()));
            let Some(top) = &self.top else {
                return Err(CommandError::Failed {
                    program: "git".into(),
                    code: Some(128),
                    signal: None,
                    stderr_tail: "fatal: not a git repository".into(),
                });
            };
            let stdout = if rendered.starts_with("git rev-parse") {
                format!("{}\n", top.display()).into_bytes()
            } else {
                self.listing.to_vec()
            };
            Ok(Output {
                stdout,
                stderr: Vec::new(),
            })
        }
    }

    fn fake_git(top: Option<&Path>, listing: &'static [u8]) -> FakeGit {
        FakeGit {
            top: top.map(Path::to_path_buf),
            listing,
            calls: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn a_checkout_is_found_from_a_subdirectory_with_its_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/b.rs"), "b").unwrap();
        let git = fake_git(Some(dir.path()), b"src/b.rs\0");
        let found = find_from(&git, &dir.path().join("src")).unwrap();
        assert_eq!(found.top, dir.path());
        assert_eq!(found.files, vec![PathBuf::from("src/b.rs")]);
        assert_eq!(found.subdir, PathBuf::from("src"));
        let calls = git.calls.lock().unwrap();
        assert_eq!(
            calls[1].1.as_deref(),
            Some(dir.path()),
            "ls-files runs at the top"
        );
    }

    #[test]
    fn outside_a_checkout_nothing_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_from(&fake_git(None, b""), dir.path()), None);
    }

    #[tokio::test]
    async fn tar_is_told_the_file_names_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let checkout = Checkout {
            top: dir.path().to_path_buf(),
            files: vec![PathBuf::from("a.txt"), PathBuf::from("src/b.rs")],
            subdir: PathBuf::new(),
        };
        // `cat` stands in for tar: its "archive" is the list it was given.
        let spawner = RecordingSpawner::new(Cmd::new("cat"));
        let mut tar = start_tar(&spawner, &checkout).unwrap();
        let mut archive = Vec::new();
        tar.stdout
            .take()
            .unwrap()
            .read_to_end(&mut archive)
            .await
            .unwrap();
        assert_eq!(archive, b"a.txt\0src/b.rs\0");
        let (cmd, _) = &spawner.spawns()[0];
        assert_eq!(cmd.to_string(), "tar --null --no-recursion -T - -cf -");
        assert_eq!(cmd.cwd.as_deref(), Some(dir.path()));
    }

    #[tokio::test]
    async fn a_missing_tar_says_to_install_it() {
        let checkout = Checkout {
            top: PathBuf::from("/"),
            files: Vec::new(),
            subdir: PathBuf::new(),
        };
        let err = start_tar(&RecordingSpawner::missing(), &checkout).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "cannot run tar to copy the checkout (install tar): tar not found in PATH: install tar"
        );
    }

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
