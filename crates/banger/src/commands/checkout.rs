//! `vm run` inside a git checkout: which checkout the current directory is
//! in, and where the command runs in the guest. The copy itself is the
//! daemon's (`workspace prepare`, see `commands/workspace.rs`): the guest
//! gets a real git repository at `/root/repo` with the host's uncommitted
//! edits, and the command runs in the matching subdirectory.

use banger_sys::command::{Cmd, Runner};
use std::path::{Path, PathBuf};

/// Where the checkout lands in the guest.
pub const GUEST_DIR: &str = "/root/repo";

#[derive(Debug, PartialEq)]
pub struct Checkout {
    pub top: PathBuf,
    /// The caller's directory relative to `top`.
    pub subdir: PathBuf,
}

/// The git checkout around the current directory, if there is one (and git).
pub fn find(runner: &dyn Runner) -> Option<Checkout> {
    find_from(runner, &std::env::current_dir().ok()?)
}

fn find_from(runner: &dyn Runner, cwd: &Path) -> Option<Checkout> {
    if !may_be_in_checkout(cwd) {
        return None;
    }
    let out = runner
        .run(
            &Cmd::new("git")
                .args(["rev-parse", "--show-toplevel"])
                .cwd(cwd),
        )
        .ok()?;
    let top = PathBuf::from(out.stdout_lossy().trim());
    let subdir = cwd
        .canonicalize()
        .ok()?
        .strip_prefix(top.canonicalize().ok()?)
        .ok()?
        .to_path_buf();
    Some(Checkout { top, subdir })
}

/// Whether git could find a checkout from `cwd`: a directory from `cwd` up
/// has a `.git` (a directory, or a file as worktrees and submodules have),
/// or the environment names one. A few stats, where asking git outside a
/// checkout cost ~4 ms of every `vm run`; git's own limits
/// (`GIT_CEILING_DIRECTORIES`, file system boundaries) only narrow this.
fn may_be_in_checkout(cwd: &Path) -> bool {
    if ["GIT_DIR", "GIT_WORK_TREE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        return true;
    }
    cwd.ancestors()
        .any(|dir| dir.join(".git").symlink_metadata().is_ok())
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

#[cfg(test)]
mod tests {
    use super::*;
    use banger_sys::command::{CommandError, Output};

    /// Answers `git rev-parse --show-toplevel` with `top`, or fails as git
    /// does outside a checkout.
    struct FakeGit(Option<PathBuf>);

    impl Runner for FakeGit {
        fn run(&self, _cmd: &Cmd) -> Result<Output, CommandError> {
            match &self.0 {
                Some(top) => Ok(Output {
                    stdout: format!("{}\n", top.display()).into_bytes(),
                    stderr: Vec::new(),
                }),
                None => Err(CommandError::Failed {
                    program: "git".into(),
                    code: Some(128),
                    signal: None,
                    stderr_tail: "fatal: not a git repository".into(),
                }),
            }
        }
    }

    #[test]
    fn a_checkout_is_found_from_a_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        let found = find_from(&FakeGit(Some(dir.path().into())), &dir.path().join("src")).unwrap();
        assert_eq!(found.top, dir.path());
        assert_eq!(found.subdir, PathBuf::from("src"));
    }

    /// Fails the test if git is run at all.
    struct NoGit;

    impl Runner for NoGit {
        fn run(&self, cmd: &Cmd) -> Result<Output, CommandError> {
            panic!("ran {cmd:?} with no .git above the directory");
        }
    }

    #[test]
    fn git_is_not_asked_where_no_directory_above_has_a_dot_git() {
        if std::env::var_os("GIT_DIR").is_some() || std::env::var_os("GIT_WORK_TREE").is_some() {
            eprintln!("skipped: GIT_DIR or GIT_WORK_TREE is set, so git must be asked");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        if dir.path().ancestors().any(|d| d.join(".git").exists()) {
            eprintln!("skipped: the temporary directory is inside a git checkout");
            return;
        }
        std::fs::create_dir(dir.path().join("src")).unwrap();
        assert_eq!(find_from(&NoGit, &dir.path().join("src")), None);
        // A worktree's or submodule's `.git` is a file.
        std::fs::write(dir.path().join(".git"), "gitdir: /elsewhere\n").unwrap();
        let found = find_from(&FakeGit(Some(dir.path().into())), &dir.path().join("src"));
        assert_eq!(found.map(|c| c.subdir), Some(PathBuf::from("src")));
    }

    #[test]
    fn outside_a_checkout_there_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_from(&FakeGit(None), dir.path()), None);
    }

    #[test]
    fn the_guest_cwd_follows_the_callers_subdirectory() {
        assert_eq!(guest_cwd(Path::new("")), "/root/repo");
        assert_eq!(guest_cwd(Path::new("crates/x")), "/root/repo/crates/x");
    }
}
