//! The guest's serial console on the host: kept to a bounded size, read in
//! bounded pieces. It does not say where the console is (the engine does:
//! `Engine::console_log`) nor how text reaches a terminal
//! (`banger_api::text`).
//!
//! The engine writes the console itself, appending to `console.log` (QEMU's
//! `-chardev file,append=on` opens it `O_APPEND`). A guest writes to it as
//! fast as the emulated UART goes (about 1 MB/s under TCG, more under KVM),
//! for as long as it likes, so:
//!
//! 1. While a VM runs, the daemon looks at the file's size every
//!    [`CHECK_EVERY`] ([`keep_capped`], started with the watch on the
//!    engine, for booted and adopted VMs alike).
//! 2. Past [`SEGMENT_CAP`], [`rotate`] copies the file's last
//!    [`SEGMENT_CAP`] bytes to `console.log.1` (replacing the segment before)
//!    and truncates `console.log` to nothing. The engine's descriptor is in
//!    append mode, so its next write lands at the new end, offset 0: no
//!    reopen, no engine command.
//! 3. Readers never hold a whole file: [`Snapshot`] reads both segments in
//!    [`READ_CHUNK`] pieces up to the lengths they had when it began, and
//!    [`Follower`] reads what is appended after, starting again at offset 0
//!    when it finds the file shorter than where it was (rotated).
//!
//! Why rotate a file the engine writes rather than give the engine a pipe
//! the daemon drains into a ring: the file keeps the console while the
//! daemon is down (it may be killed at any moment, and VMs keep running),
//! and gets bounded again at the first check of the next daemon. A pipe
//! nobody drains stalls the guest's console writes, or drops them. The
//! price: the disk holds at most two segments plus what the guest writes in
//! one check interval (or while no daemon runs), and what the guest writes
//! between the copy and the truncate (microseconds) is lost.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The console is rotated past this size; the previous segment keeps this
/// much of it.
pub const SEGMENT_CAP: u64 = 4 * 1024 * 1024;

/// How often a running VM's console size is checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The most a reader takes from a console file at once.
pub const READ_CHUNK: u64 = 64 * 1024;

/// The segment before `console`: `console.log.1` beside `console.log`.
pub fn previous(console: &Path) -> PathBuf {
    let mut name = console.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// When `console` is larger than `cap`: its last `cap` bytes become the
/// previous segment and it is truncated. Returns whether it rotated; a
/// missing console is not an error.
pub fn rotate(console: &Path, cap: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(console)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= cap {
        return Ok(false);
    }
    let prev = previous(console);
    let mut tmp_name = prev.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.seek(SeekFrom::Start(len - cap))?;
    // To the end, so what the guest wrote since `len` is kept too (bounded:
    // copying is far faster than any UART).
    std::io::copy(&mut (&mut f).take(2 * cap), &mut out)?;
    f.set_len(0)?;
    std::fs::rename(&tmp, &prev)?;
    Ok(true)
}

/// Keeps `console` under [`SEGMENT_CAP`] (plus one interval's output) for
/// as long as it is polled; the caller drops it when the engine exits.
pub async fn keep_capped(console: PathBuf) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tick.tick().await;
        if std::fs::metadata(&console).map_or(true, |m| m.len() <= SEGMENT_CAP) {
            continue;
        }
        let path = console.clone();
        let result = tokio::task::spawn_blocking(move || rotate(&path, SEGMENT_CAP)).await;
        match result {
            Ok(Ok(_)) => last_error = None,
            Ok(Err(e)) => {
                // Once per distinct error: a flood would repeat it four times a second.
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::warn!(console = %console.display(), error = %message, "cannot rotate the console log");
                    last_error = Some(message);
                }
            }
            Err(e) => tracing::warn!(error = %e, "console rotation task failed"),
        }
    }
}

/// Up to `max` bytes of `path` from offset `pos` (empty at its end, or when
/// it is missing).
pub fn read_at(path: &Path, pos: u64, max: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(pos)).is_ok()
    {
        let _ = f.take(max).read_to_end(&mut buf);
    }
    buf
}

fn len_of(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The console as it is now, oldest first: the previous segment, then the
/// current one, each up to the length it had when the snapshot was taken
/// (a flooding guest cannot make the read endless).
#[derive(Debug)]
pub struct Snapshot {
    /// (file, next offset, end offset), in order.
    parts: Vec<(PathBuf, u64, u64)>,
    /// Where the current segment's snapshot ends: a [`Follower`] starts there.
    end: u64,
    console: PathBuf,
}

impl Snapshot {
    pub fn new(console: &Path) -> Snapshot {
        let prev = previous(console);
        let end = len_of(console);
        Snapshot {
            parts: vec![
                (prev.clone(), 0, len_of(&prev)),
                (console.to_owned(), 0, end),
            ],
            end,
            console: console.to_owned(),
        }
    }

    /// The next piece (at most [`READ_CHUNK`] bytes), or `None` when done.
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        while let Some((path, pos, end)) = self.parts.first_mut() {
            if *pos < *end {
                let chunk = read_at(path, *pos, (*end - *pos).min(READ_CHUNK));
                if !chunk.is_empty() {
                    *pos += chunk.len() as u64;
                    return Some(chunk);
                }
            }
            // Done, or shorter than it was (rotated meanwhile): next part.
            self.parts.remove(0);
        }
        None
    }

    /// Follows the console from where this snapshot ends.
    pub fn follow(&self) -> Follower {
        Follower {
            previous: file_id(&previous(&self.console)),
            console: self.console.clone(),
            pos: self.end,
        }
    }
}

/// The (device, inode) of `path`: each rotation makes a new previous
/// segment, so a new one means the console started over.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// What is appended to the console from an offset on.
#[derive(Debug)]
pub struct Follower {
    console: PathBuf,
    pos: u64,
    previous: Option<(u64, u64)>,
}

impl Follower {
    /// What was appended since the last call (at most [`READ_CHUNK`]
    /// bytes; empty when nothing was).
    pub fn next_chunk(&mut self) -> Vec<u8> {
        let previous = file_id(&previous(&self.console));
        if previous != self.previous || len_of(&self.console) < self.pos {
            // Rotated: the file started over (what the guest wrote between
            // our last read and the rotation is in the previous segment).
            self.previous = previous;
            self.pos = 0;
        }
        let chunk = read_at(&self.console, self.pos, READ_CHUNK);
        self.pos += chunk.len() as u64;
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, bytes: &[u8]) -> std::fs::File {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn drain(s: &mut Snapshot) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(c) = s.next_chunk() {
            assert!(c.len() as u64 <= READ_CHUNK);
            all.extend(c);
        }
        all
    }

    #[test]
    fn a_console_past_its_cap_keeps_its_end_and_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        // The engine's descriptor: append mode, held across the rotation.
        let mut engine = append(&console, b"old old old\nrecent\n");
        assert!(!rotate(&console, 64).unwrap(), "under the cap: left alone");
        assert!(rotate(&console, 7).unwrap());
        assert_eq!(std::fs::read(previous(&console)).unwrap(), b"recent\n");
        assert_eq!(std::fs::metadata(&console).unwrap().len(), 0);
        engine.write_all(b"after\n").unwrap();
        assert_eq!(
            std::fs::read(&console).unwrap(),
            b"after\n",
            "the engine's next write lands at the start"
        );
        assert!(!rotate(&dir.path().join("none"), 7).unwrap());
    }

    #[test]
    fn a_snapshot_reads_both_segments_in_chunks_up_to_their_length_then() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        std::fs::write(previous(&console), b"before\n").unwrap();
        let big = vec![b'A'; 3 * READ_CHUNK as usize + 5];
        let mut engine = append(&console, &big);
        let mut snap = Snapshot::new(&console);
        engine.write_all(b"later\n").unwrap();
        let all = drain(&mut snap);
        assert_eq!(&all[..7], b"before\n");
        assert_eq!(
            &all[7..],
            &big[..],
            "what came after the snapshot is not in it"
        );
        let mut follow = snap.follow();
        assert_eq!(follow.next_chunk(), b"later\n");
        assert!(follow.next_chunk().is_empty());
    }

    #[test]
    fn a_follower_starts_over_when_the_console_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        let mut engine = append(&console, b"0123456789\n");
        let mut follow = Snapshot::new(&console).follow();
        assert!(rotate(&console, 4).unwrap());
        engine.write_all(b"new\n").unwrap();
        assert_eq!(follow.next_chunk(), b"new\n");
        // Rotated again, and longer by now than where the follower was.
        engine.write_all(b"0123456789\n").unwrap();
        assert!(rotate(&console, 4).unwrap());
        engine.write_all(b"a longer line than before\n").unwrap();
        assert_eq!(follow.next_chunk(), b"a longer line than before\n");
    }
}
