//! `archive`: the push decoder of the file archive format
//! ([`banger_proto::archive::Decoder`]), which the agent runs on whatever
//! the host streams to `unpack` and the daemon on whatever a guest sends
//! back from `pack`.
//!
//! Invariants: no panic, whole or split at any points; the split does not
//! change what is decoded (events, with adjacent data merged, and the
//! error); no feed makes the decoder hold more than a header's worth of
//! bytes beyond the events that feed produced, however large a size it
//! declares; the events obey the module doc (the root first with the
//! empty path, every other path passes `check_path`, modes within
//! `MODE_MASK`, bounded symlink targets, a file's data adds up to its
//! size, nothing after a leaf root, `End` last); and a complete archive
//! encodes back to exactly its bytes.

use super::{STRUCTURED, Target, mix, outcome_of};
use crate::rng::Rng;
use arbitrary::Unstructured;
use banger_proto::archive::{
    Decoder, Encoder, EntryHeader, EntryKind, Event, MAX_PATH, MAX_TARGET, MODE_MASK, check_path,
};
use banger_sys::alloc::peak_during;

pub const TARGET: Target = Target {
    name: "archive",
    about: "the archive push decoder, whole and split at arbitrary points",
    run,
    max_len: 16 * 1024,
    dictionary: &[
        b"\x00",
        b"\x01\x00\x00\x01\xed\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        b"\x02\x00\x00\x01\xa4\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01a",
        b"\x03\x00\x00\x01\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01l",
        b"\x00\x00\x00\x00\x00\x00\x00\x05",
        b"\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\x10\x00",
        b"\x10\x01",
        b"..",
        b"/",
    ],
};

/// The longest header the decoder may hold: a symlink's fixed part, path,
/// target length and target.
const HEADER_MAX: usize = 15 + MAX_PATH + 2 + MAX_TARGET;

pub fn run(data: &[u8]) -> u64 {
    let built;
    let bytes = match data.split_first() {
        Some((&STRUCTURED, rest)) => {
            built = build(&mut Unstructured::new(rest));
            &built[..]
        }
        _ => data,
    };
    check(bytes)
}

#[derive(Debug, PartialEq)]
struct Decoded {
    events: Vec<Event>,
    error: Option<String>,
    complete: bool,
}

/// Feeds `chunks` one by one, draining events after each and checking
/// that no feed holds more than its bound.
fn decode<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Decoded {
    let mut dec = Decoder::new();
    let mut events: Vec<Event> = Vec::new();
    let mut error = None;
    for chunk in chunks {
        let (result, peak) = peak_during(|| dec.feed(chunk));
        // Per input byte at most one queued event (plus its bytes); beyond
        // that, one header and the copies made of its path and target.
        let bound = 4 * HEADER_MAX + chunk.len() * (2 * size_of::<Event>() + 2) + 4096;
        assert!(
            peak <= bound,
            "feeding {} bytes held {peak} bytes (bound {bound})",
            chunk.len()
        );
        while let Some(ev) = dec.next_event() {
            match (events.last_mut(), ev) {
                (Some(Event::Data(prev)), Event::Data(more)) => prev.extend_from_slice(&more),
                (_, ev) => events.push(ev),
            }
        }
        if let Err(e) = result {
            error = Some(e.to_string());
            break;
        }
    }
    Decoded {
        events,
        error,
        complete: dec.is_complete(),
    }
}

/// Split points that are a function of the input, so a crash replays.
fn chunks(bytes: &[u8]) -> Vec<&[u8]> {
    let mut rng = Rng::from_bytes(bytes);
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below(16),
            2 => 1 + rng.below(512),
            _ => rest.len(),
        };
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

pub fn check(bytes: &[u8]) -> u64 {
    let whole = decode(std::iter::once(bytes));
    let split = decode(chunks(bytes).into_iter());
    assert_eq!(
        whole, split,
        "splitting the input changed what it decodes to"
    );
    let entries = check_events(&whole.events);
    if whole.complete {
        assert!(
            whole.error.is_none()
                || whole.error.as_deref() == Some("archive has bytes after its end marker")
        );
        if whole.error.is_none() {
            check_round_trip(&whole.events, bytes);
        }
    }
    let error = whole.error.as_deref().map_or(0, outcome_of);
    mix(mix(error, entries.min(16)), u64::from(whole.complete))
}

/// Checks the event sequence against the format; returns the entry count.
fn check_events(events: &[Event]) -> u64 {
    let mut entries = 0u64;
    let mut owed: Option<u64> = None;
    let mut leaf_root = false;
    let mut ended = false;
    for ev in events {
        assert!(!ended, "an event after End: {ev:?}");
        match ev {
            Event::Entry(h) => {
                assert!(
                    owed.is_none_or(|n| n == 0),
                    "an entry before its file's data"
                );
                assert!(!leaf_root, "an entry after a leaf root: {h:?}");
                check_header(h, entries == 0);
                leaf_root = entries == 0 && h.kind != EntryKind::Dir;
                owed = match h.kind {
                    EntryKind::File { size } => Some(size),
                    _ => None,
                };
                entries += 1;
            }
            Event::Data(d) => {
                let left = owed.expect("data outside a file");
                assert!(
                    !d.is_empty() && d.len() as u64 <= left,
                    "more data than declared"
                );
                owed = Some(left - d.len() as u64);
            }
            Event::End => {
                assert!(owed.is_none_or(|n| n == 0), "End inside a file");
                assert!(entries > 0, "End before the root");
                ended = true;
            }
        }
    }
    entries
}

fn check_header(h: &EntryHeader, root: bool) {
    if root {
        assert!(h.path.is_empty(), "the first entry is not the root: {h:?}");
    } else {
        assert!(
            check_path(&h.path).is_ok(),
            "yielded a bad path: {:?}",
            h.path
        );
    }
    assert!(
        h.mode & !MODE_MASK == 0,
        "mode {:#o} escaped the mask",
        h.mode
    );
    if let EntryKind::Symlink { target } = &h.kind {
        assert!(!target.is_empty() && target.len() <= MAX_TARGET && !target.contains(&0));
    }
}

/// A complete archive encodes back to its own bytes, but for a symlink's
/// mode: ignored on the wire, and always written as `0o777`.
fn check_round_trip(events: &[Event], bytes: &[u8]) {
    let normal: Vec<Event> = events
        .iter()
        .cloned()
        .map(|ev| match ev {
            Event::Entry(h) if matches!(h.kind, EntryKind::Symlink { .. }) => {
                Event::Entry(EntryHeader { mode: 0o777, ..h })
            }
            ev => ev,
        })
        .collect();
    let again = reencode(events);
    if normal == events {
        assert_eq!(again, bytes, "a decoded archive re-encodes differently");
    } else {
        assert_eq!(decode(std::iter::once(&again[..])).events, normal);
    }
}

fn reencode(events: &[Event]) -> Vec<u8> {
    let mut enc = Encoder::new(Vec::new());
    for ev in events {
        let done = match ev {
            Event::Entry(h) => match &h.kind {
                EntryKind::Dir => enc.dir(&h.path, h.mode, h.mtime),
                EntryKind::File { size } => enc.file(&h.path, h.mode, h.mtime, *size),
                EntryKind::Symlink { target } => enc.symlink(&h.path, h.mtime, target),
            },
            Event::Data(d) => enc.data(d),
            Event::End => break,
        };
        done.expect("the encoder refuses what the decoder accepted");
    }
    enc.end()
        .expect("the encoder refuses what the decoder accepted")
}

/// An archive from `arbitrary`: a root and entries with paths, modes,
/// sizes and targets near every rule's edge, written without the
/// encoder's checks.
fn build(u: &mut Unstructured) -> Vec<u8> {
    let mut out = Vec::new();
    let entries = u.int_in_range(0..=8).unwrap_or(1);
    for i in 0..entries {
        let kind: u8 = match u.int_in_range(0..=15).unwrap_or(0) {
            0..=5 => 1,
            6..=11 => 2,
            12..=14 => 3,
            _ => u.arbitrary().unwrap_or(9),
        };
        let mode: u32 = if u.ratio(1, 8).unwrap_or(false) {
            u.arbitrary().unwrap_or(0)
        } else {
            *u.choose(&[0o755, 0o644, 0o7777, 0o600]).unwrap_or(&0o755)
        };
        let path = if i == 0 && !u.ratio(1, 16).unwrap_or(false) {
            Vec::new()
        } else {
            super::path::build(u)
        };
        out.push(kind);
        out.extend_from_slice(&mode.to_be_bytes());
        out.extend_from_slice(&u.arbitrary::<i64>().unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&(path.len() as u16).to_be_bytes());
        out.extend_from_slice(&path);
        match kind {
            2 => {
                let n = u.int_in_range(0..=64).unwrap_or(0);
                let content = u.bytes(n).unwrap_or(b"");
                let size = if u.ratio(1, 8).unwrap_or(false) {
                    u.arbitrary::<u64>().unwrap_or(0)
                } else {
                    content.len() as u64
                };
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(content);
            }
            3 => {
                let target: Vec<u8> = match u.int_in_range(0..=5).unwrap_or(0) {
                    0 => Vec::new(),
                    1 => b"a\0b".to_vec(),
                    2 => vec![b't'; MAX_TARGET + u.int_in_range(0..=1).unwrap_or(1)],
                    _ => {
                        let n = u.int_in_range(1..=16).unwrap_or(1);
                        u.bytes(n).unwrap_or(b"t").to_vec()
                    }
                };
                out.extend_from_slice(&(target.len() as u16).to_be_bytes());
                out.extend_from_slice(&target);
            }
            _ => {}
        }
    }
    if !u.ratio(1, 8).unwrap_or(false) {
        out.push(0);
    }
    if u.ratio(1, 16).unwrap_or(false) {
        out.push(u.arbitrary().unwrap_or(0));
    }
    out
}
