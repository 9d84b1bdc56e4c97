//! `path`: archive entry paths ([`banger_proto::archive::check_path`]),
//! the rule that keeps an unpacked archive inside its destination.
//!
//! Invariants: an accepted path is non-empty, at most `MAX_PATH` bytes,
//! relative, free of NUL, and every component is a plain name of at most
//! `MAX_NAME` bytes (never empty, `.` or `..`), which is also how `std`'s
//! own path parser sees it; the verdict agrees with an independent
//! reading of the module's rules; the encoder accepts exactly the paths
//! `check_path` accepts; every rejection names the path.
//!
//! The CLI's `VM:PATH` parser (`banger/src/commands/cp.rs`) lives in a
//! binary crate this one cannot link, so it is not a target.

use super::{STRUCTURED, Target, outcome_of};
use arbitrary::Unstructured;
use banger_proto::archive::{Encoder, MAX_NAME, MAX_PATH, PathError, check_path, lossy};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

pub const TARGET: Target = Target {
    name: "path",
    about: "archive entry paths (check_path, and the encoder's use of it)",
    run,
    max_len: 6000,
    dictionary: &[
        b"/",
        b"..",
        b".",
        b"//",
        b"/../",
        b"\0",
        b".git",
        b"...",
        b"\\",
        b"\xc3\xa9",
    ],
};

const PARTS: &[&[u8]] = &[
    b"a",
    b"..",
    b".",
    b"",
    b"...",
    b"..a",
    b".git",
    b"a\\..\\b",
    b"\0",
    b"\xff\xfe",
    b"\xc3\xa9",
];

pub fn run(data: &[u8]) -> u64 {
    let built;
    let path = match data.split_first() {
        Some((&STRUCTURED, rest)) => {
            built = build(&mut Unstructured::new(rest));
            &built[..]
        }
        _ => data,
    };
    check(path)
}

/// Joins components drawn from [`PARTS`], arbitrary bytes and long runs.
pub(crate) fn build(u: &mut Unstructured) -> Vec<u8> {
    let mut out = Vec::new();
    if u.ratio(1, 8).unwrap_or(false) {
        out.push(b'/');
    }
    let parts = u.int_in_range(1..=12).unwrap_or(1);
    for i in 0..parts {
        if i > 0 {
            out.push(b'/');
        }
        match u.int_in_range(0..=3).unwrap_or(0) {
            0 | 1 => out.extend_from_slice(u.choose(PARTS).unwrap_or(&&b"a"[..])),
            2 => {
                let n = u.int_in_range(250..=260).unwrap_or(255);
                out.extend(std::iter::repeat_n(b'n', n));
            }
            _ => {
                let n = u.int_in_range(0..=8).unwrap_or(0);
                out.extend_from_slice(u.bytes(n).unwrap_or(b"x"));
            }
        }
    }
    if u.ratio(1, 8).unwrap_or(false) {
        out.push(b'/');
    }
    if u.ratio(1, 16).unwrap_or(false) {
        let n = MAX_PATH + 1 - out.len().min(MAX_PATH);
        out.extend(std::iter::repeat_n(b'p', n));
    }
    out
}

/// The rules of `archive/path.rs`'s module doc, read independently.
fn reference(path: &[u8]) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && !path.contains(&0)
        && path
            .split(|&b| b == b'/')
            .all(|name| !matches!(name, b"" | b"." | b"..") && name.len() <= MAX_NAME)
}

pub fn check(path: &[u8]) -> u64 {
    let verdict = check_path(path);
    assert_eq!(
        verdict.is_ok(),
        reference(path),
        "check_path and the documented rules disagree on {path:?}: {verdict:?}"
    );
    let by_encoder = {
        let mut enc = Encoder::new(Vec::new());
        enc.dir(b"", 0o755, 0).expect("the root is always accepted");
        enc.dir(path, 0o755, 0).is_ok()
    };
    assert_eq!(
        by_encoder,
        verdict.is_ok(),
        "the encoder and check_path disagree on {path:?}"
    );
    match verdict {
        Ok(()) => {
            assert!(!path.is_empty() && path.len() <= MAX_PATH);
            assert!(!path.contains(&0), "accepted a NUL: {path:?}");
            assert_ne!(path[0], b'/', "accepted an absolute path: {path:?}");
            let std_view = Path::new(OsStr::from_bytes(path));
            assert!(!std_view.is_absolute());
            let names = path.split(|&b| b == b'/').count();
            let mut seen = 0;
            for c in std_view.components() {
                seen += 1;
                match c {
                    Component::Normal(name) => {
                        assert!(name.len() <= MAX_NAME, "long name in {path:?}");
                    }
                    other => panic!("accepted {path:?} with a {other:?} component"),
                }
            }
            assert_eq!(seen, names, "std reads {path:?} as other components");
            0
        }
        Err(e) => {
            let message = e.to_string();
            match &e {
                PathError::Empty => assert!(path.is_empty()),
                PathError::TooLong { .. } => {
                    assert!(path.len() > MAX_PATH);
                    assert!(message.contains(&format!("{:?}", lossy(&path[..64]))));
                }
                _ => assert!(
                    message.contains(&format!("{:?}", lossy(path))),
                    "{message:?} does not name {path:?}"
                ),
            }
            1 + outcome_of(&message) % 64
        }
    }
}
