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
        let found = find_from(&FakeGit(Some(dir.path().into())), &dir.path().join("src")).unwrap();
        assert_eq!(found.top, dir.path());
        assert_eq!(found.subdir, PathBuf::from("src"));
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
