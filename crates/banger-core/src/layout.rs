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

/// How much of a log's end [`tail`] reads, at most.
pub const TAIL_WINDOW: u64 = 16 * 1024;
/// How many characters of one line [`tail`] quotes.
pub const TAIL_LINE_CHARS: usize = 200;

/// The last `n` non-blank lines of a log file, joined with " | ", for an
/// error message. Logs are often the guest's, so: only the file's last
/// [`TAIL_WINDOW`] bytes are read (a guest can make its console as large as
/// the disk allows), each line is cut at [`TAIL_LINE_CHARS`], and control
/// characters are escaped ([`banger_api::text::escape_line`]).
pub fn tail(path: &Path, n: usize) -> String {
    tail_lines(path, n).join(" | ")
}

/// [`tail`]'s lines, each cut and escaped, before they are joined.
pub fn tail_lines(path: &Path, n: usize) -> Vec<String> {
    let text = read_end(path, TAIL_WINDOW).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| quote_line(l))
        .collect()
}

fn quote_line(line: &str) -> String {
    let mut cut: String = line.chars().take(TAIL_LINE_CHARS).collect();
    if cut.len() < line.len() {
        cut.push('…');
    }
    banger_api::text::escape_line(&cut)
}

/// The last `max` bytes of `path`, from the start of a line: a line cut by
/// the window's start is dropped, unless the window holds nothing else.
fn read_end(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity(max.min(len) as usize);
    f.take(max).read_to_end(&mut buf)?;
    if start > 0
        && let Some(nl) = buf.iter().position(|b| *b == b'\n')
        && nl + 1 < buf.len()
    {
        buf.drain(..=nl);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_joins_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\r\n\nc\n").unwrap();
        assert_eq!(tail(&p, 2), "b | c");
        assert_eq!(tail(&dir.path().join("none"), 2), "");
    }

    #[test]
    fn tail_reads_only_the_end_of_a_huge_log() {
        // A terabyte console (sparse: no disk used) reading whole would
        // need a terabyte of memory; the tail seeks to its end.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(1 << 40).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"\nkernel panic\nend of the line\n", (1 << 40) - 30)
            .unwrap();
        let t0 = std::time::Instant::now();
        let t = tail(&p, 2);
        assert!(t.ends_with("kernel panic | end of the line"), "{t}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn tail_drops_the_line_cut_by_its_window_and_shortens_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let cut = "c".repeat(TAIL_WINDOW as usize);
        let long = "x".repeat(1000);
        std::fs::write(&p, format!("{cut}\n{long}\nlast\n")).unwrap();
        let t = tail(&p, 5);
        assert_eq!(t, format!("{}… | last", "x".repeat(TAIL_LINE_CHARS)));
    }

    #[test]
    fn tail_escapes_control_characters() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "boot\n\x1b]0;owned\x07\x1b[2J done\r\n").unwrap();
        assert_eq!(tail(&p, 2), "boot | \\x1b]0;owned\\x07\\x1b[2J done");
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
