//! The fuzz targets: one file per decoder a hostile peer can feed. Each
//! exposes one `run(&[u8]) -> u64` that never panics on any input unless
//! an invariant of the decoder broke; the number it returns is the
//! input's outcome (see [`crate::engine`]).
//!
//! Inputs that start with [`STRUCTURED`] are not decoded as they are: the
//! rest is handed to `arbitrary` to build a document of the target's
//! format (a JSON request, a TOML config, an archive, a path) from the
//! words that format cares about, so mutations explore deep inside valid
//! documents as well as around their edges. Any other input is decoded
//! as raw bytes, which is what the corpus files are.

use crate::rng::fnv1a;

pub mod api;
pub mod archive;
pub mod config;
pub mod frame;
pub mod path;

/// First byte of an input to be built with `arbitrary` rather than
/// decoded raw. Never a valid first byte of JSON, TOML, a frame or an
/// archive, so no raw input of interest is lost to it.
pub const STRUCTURED: u8 = 0xff;

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&[u8]) -> u64,
    /// Longest input the engine builds.
    pub max_len: usize,
    /// Tokens mutations insert: the words and delimiters of the format.
    pub dictionary: &'static [&'static [u8]],
}

pub fn all() -> &'static [Target] {
    &[
        api::TARGET,
        config::TARGET,
        frame::TARGET,
        archive::TARGET,
        path::TARGET,
    ]
}

pub fn find(name: &str) -> Option<&'static Target> {
    all().iter().find(|t| t.name == name)
}

/// An outcome from an error message: the kind of error, not its details.
/// Messages put the input's own text in quotes, in the middle; so the
/// shape is the letters before the first quote and the letters of the
/// last 40 bytes read backwards, quoted parts left out ("unknown variant
/// … expected one of"), and "line 3" and "line 4", or two unknown
/// fields, are one outcome but "unknown field" and "invalid type" two.
pub fn outcome_of(message: &str) -> u64 {
    let letter = |b: &u8| b.is_ascii_alphabetic() || *b == b' ';
    let quote = |b: &u8| matches!(b, b'`' | b'"' | b'\'');
    let mut shape: Vec<u8> = message
        .bytes()
        .take(40)
        .take_while(|b| !quote(b))
        .filter(letter)
        .collect();
    shape.push(b'|');
    let mut open: Option<u8> = None;
    for b in message.bytes().rev().take(40) {
        match open {
            Some(q) if b == q => open = None,
            Some(_) => {}
            None if quote(&b) => open = Some(b),
            None if letter(&b) => shape.push(b),
            None => {}
        }
    }
    fnv1a(&shape)
}

/// Combines outcomes (order matters).
pub fn mix(a: u64, b: u64) -> u64 {
    a.rotate_left(17) ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
