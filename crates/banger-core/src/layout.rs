//! Where a VM's files live, named once. A VM has two directories:
//!
//! - its state dir `<state>/vms/<id>`: disks, the config drive, the console
//!   and engine logs, and `handles.json` (the transient scratch file);
//! - its runtime dir `<runtime>/vms/<id>`: the engine's unix sockets, kept
//!   short for the 108-byte socket path limit.
//!
//! Engines name their own root disk and sockets (see `engine`); everything
//! else about a VM's files is here.

use std::path::{Path, PathBuf};

pub const WORK_DISK: &str = "work.ext4";
pub const CONFIG_DRIVE: &str = "config.img";
pub const CONSOLE_LOG: &str = "console.log";
pub const ENGINE_LOG: &str = "engine.log";
pub const HANDLES: &str = "handles.json";

/// The two directories of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir {
    pub state: PathBuf,
    pub run: PathBuf,
}

impl VmDir {
    pub fn new(state_dir: &Path, runtime_dir: &Path, vm_id: &str) -> VmDir {
        VmDir {
            state: state_dir.join("vms").join(vm_id),
            run: runtime_dir.join("vms").join(vm_id),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.state.join(name)
    }

    pub fn work_disk(&self) -> PathBuf {
        self.file(WORK_DISK)
    }

    pub fn config_drive(&self) -> PathBuf {
        self.file(CONFIG_DRIVE)
    }

    pub fn console_log(&self) -> PathBuf {
        self.file(CONSOLE_LOG)
    }

    pub fn engine_log(&self) -> PathBuf {
        self.file(ENGINE_LOG)
    }

    pub fn handles(&self) -> PathBuf {
        self.file(HANDLES)
    }

    /// Makes the state dir (owner-only: it holds the guest's disks).
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state)
    }

    /// Removes both directories; missing ones are fine.
    pub fn remove(&self) -> std::io::Result<()> {
        remove_dir_if_present(&self.run)?;
        remove_dir_if_present(&self.state)
    }
}

pub fn remove_dir_if_present(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The last `n` non-blank lines of a log file, joined with " | ".
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_joins_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\n\nc\n").unwrap();
        assert_eq!(tail(&p, 2), "b | c");
        assert_eq!(tail(&dir.path().join("none"), 2), "");
    }

    #[test]
    fn a_vm_dir_is_made_private_and_removed_whole() {
        let root = tempfile::tempdir().unwrap();
        let d = VmDir::new(&root.path().join("s"), &root.path().join("r"), "abc");
        d.create().unwrap();
        std::fs::create_dir_all(&d.run).unwrap();
        std::fs::write(d.work_disk(), b"x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&d.state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        d.remove().unwrap();
        assert!(!d.state.exists() && !d.run.exists());
        d.remove().unwrap();
    }
}
