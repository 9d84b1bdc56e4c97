//! Byte-level mutations in the manner of AFL's havoc stage: bit flips,
//! boundary values written over length fields, inserted and deleted runs,
//! dictionary tokens and splices of two inputs. Knows nothing of any
//! format; the targets' dictionaries carry what a format cares about.

use crate::rng::Rng;

/// Values that sit on a boundary of something: a sign, a byte, a `u16`
/// length, the archive's path and target limits, the frame limit.
const INTERESTING_16: &[u16] = &[
    0, 1, 2, 15, 16, 63, 64, 127, 128, 255, 256, 4095, 4096, 4097, 0x7fff, 0x8000, 0xffff,
];
const INTERESTING_32: &[u32] = &[
    0,
    1,
    5,
    0x7f,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    0x7fff_ffff,
    0x8000_0000,
    u32::MAX,
];

/// Applies between one and sixteen stacked mutations to `input`, drawing
/// tokens from `dictionary` and splice partners from `pool`; the result is
/// at most `max_len` bytes.
pub fn mutate(
    rng: &mut Rng,
    input: &[u8],
    pool: &[Vec<u8>],
    dictionary: &[&[u8]],
    max_len: usize,
) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = 1 << rng.below(5);
    for _ in 0..rounds {
        mutate_once(rng, &mut out, pool, dictionary);
    }
    out.truncate(max_len);
    out
}

fn mutate_once(rng: &mut Rng, out: &mut Vec<u8>, pool: &[Vec<u8>], dictionary: &[&[u8]]) {
    match rng.below(12) {
        0 if !out.is_empty() => {
            let at = rng.below(out.len());
            out[at] ^= 1 << rng.below(8);
        }
        1 if !out.is_empty() => {
            let at = rng.below(out.len());
            out[at] = *rng.pick(&[
                0, 1, b'\n', b'"', b'/', b'.', b'\\', b'=', b'[', 0x7f, 0x80, 0xff,
            ]);
        }
        2 if out.len() >= 2 => {
            let at = rng.below(out.len() - 1);
            let v = *rng.pick(INTERESTING_16);
            out[at..at + 2].copy_from_slice(&v.to_be_bytes());
        }
        3 if out.len() >= 4 => {
            let at = rng.below(out.len() - 3);
            let v = *rng.pick(INTERESTING_32);
            out[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        4 => {
            let at = rng.below(out.len() + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            out.splice(at..at, bytes);
        }
        5 if !out.is_empty() => {
            let at = rng.below(out.len());
            let n = 1 + rng.below((out.len() - at).min(32));
            out.drain(at..at + n);
        }
        6 if !out.is_empty() => {
            let from = rng.below(out.len());
            let n = 1 + rng.below((out.len() - from).min(64));
            let chunk = out[from..from + n].to_vec();
            let at = rng.below(out.len() + 1);
            out.splice(at..at, chunk);
        }
        7 | 8 if !dictionary.is_empty() => {
            let token = *rng.pick(dictionary);
            let at = rng.below(out.len() + 1);
            if rng.one_in(2) || at + token.len() > out.len() {
                out.splice(at..at, token.iter().copied());
            } else {
                out[at..at + token.len()].copy_from_slice(token);
            }
        }
        9 if !pool.is_empty() => {
            let other = rng.pick(pool);
            let keep = rng.below(out.len() + 1);
            let from = rng.below(other.len() + 1);
            out.truncate(keep);
            out.extend_from_slice(&other[from..]);
        }
        10 if !out.is_empty() => {
            let keep = rng.below(out.len());
            out.truncate(keep);
        }
        _ => {
            // A run of one repeated byte: long names, long lines.
            let at = rng.below(out.len() + 1);
            let n = 1 + rng.below(300);
            let b = if rng.one_in(2) { b'a' } else { rng.byte() };
            out.splice(at..at, std::iter::repeat_n(b, n));
        }
    }
}

/// Fresh random bytes, for the inputs no seed leads to.
pub fn random(rng: &mut Rng, max_len: usize) -> Vec<u8> {
    let n = rng.below(max_len.min(256) + 1);
    (0..n).map(|_| rng.byte()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_respect_the_length_limit() {
        let mut rng = Rng::new(7);
        let pool = vec![vec![1u8; 100]];
        for _ in 0..10_000 {
            let m = mutate(&mut rng, b"seed", &pool, &[b"token"], 64);
            assert!(m.len() <= 64);
        }
    }
}
