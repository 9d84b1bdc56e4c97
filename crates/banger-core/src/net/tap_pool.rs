//! The warm tap pool: idle taps made ahead of need (~0.3 ms each), so a
//! bridge-mode boot takes a ready one. Plain bookkeeping; the taps
//! themselves are made and deleted through `banger_sys::net::tap::Taps`.

/// Every tap banger makes starts with this (and fits 15 characters).
pub const TAP_PREFIX: &str = "bgtap";

/// The prefix of one instance's taps: [`TAP_PREFIX`] and four hex digits of
/// its state dir's hash, so instances sharing a network namespace do not
/// list each other's taps (and when their marks are the same, once in
/// 65,536, the taps' [`owner_tag`] keeps each to its own).
pub fn instance_prefix(state_dir: &std::path::Path) -> String {
    format!("{TAP_PREFIX}{}", instance_mark(state_dir))
}

/// Four hex digits of the state dir's hash: what marks one instance's
/// taps apart from another's by name (their alias, [`owner_tag`], tells
/// them apart for certain).
pub fn instance_mark(state_dir: &std::path::Path) -> String {
    state_hash(state_dir)[..4].to_string()
}

/// The nftables table an instance uses unless configured otherwise:
/// `banger_` and 16 hex digits of its state dir's hash (a table name has
/// room; a tap name has room for four only).
pub fn default_nft_table(state_dir: &std::path::Path) -> String {
    format!("banger_{}", &state_hash(state_dir)[..16])
}

/// The table [`default_nft_table`] replaced, named with the 4-digit mark
/// only: swept at start when its rules are for this instance's bridge.
pub fn legacy_nft_table(state_dir: &std::path::Path) -> String {
    format!("banger_{}", instance_mark(state_dir))
}

/// The state dir's SHA-256, hex: what names an instance's own things.
pub(crate) fn state_hash(state_dir: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        state_dir.as_os_str().as_encoded_bytes(),
    ))
}

/// What every tap of one instance carries as its alias: its whole state
/// dir's hash. Two instances in one namespace share a mark once in 65,536;
/// they never share this, and each sweeps only taps with its own (or none:
/// taps made before banger labelled them).
pub fn owner_tag(state_dir: &std::path::Path) -> String {
    format!("banger:{}", state_hash(state_dir))
}

/// A fresh tap name with `prefix` (an [`instance_prefix`]): 15 characters.
pub fn new_tap_name(prefix: &str) -> String {
    format!("{prefix}{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Idle taps, ready for the next boot.
#[derive(Debug, Default)]
pub struct TapPool {
    idle: Vec<String>,
}

impl TapPool {
    pub fn take(&mut self) -> Option<String> {
        self.idle.pop()
    }

    /// Keeps `tap` when the pool has room for it; gives it back otherwise.
    pub fn offer(&mut self, tap: String, size: usize) -> Option<String> {
        if self.idle.len() < size {
            self.idle.push(tap);
            None
        } else {
            Some(tap)
        }
    }

    /// How many taps would fill the pool to `size`.
    pub fn missing(&self, size: usize) -> usize {
        size.saturating_sub(self.idle.len())
    }

    pub fn contains(&self, tap: &str) -> bool {
        self.idle.iter().any(|t| t == tap)
    }

    pub fn taps(&self) -> Vec<String> {
        self.idle.clone()
    }

    pub fn drain(&mut self) -> Vec<String> {
        std::mem::take(&mut self.idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_keeps_at_most_its_size() {
        let mut p = TapPool::default();
        assert_eq!(p.missing(2), 2);
        assert_eq!(p.offer("a".into(), 1), None);
        assert_eq!(p.offer("b".into(), 1), Some("b".into()));
        assert!(p.contains("a"));
        assert_eq!(p.take(), Some("a".into()));
        assert_eq!(p.take(), None);
    }

    #[test]
    fn names_carry_the_prefix_and_fit_an_interface_name() {
        let p = instance_prefix(std::path::Path::new("/var/lib/banger"));
        let n = new_tap_name(&p);
        assert!(n.starts_with(&p) && n.starts_with(TAP_PREFIX) && n.len() <= 15);
        assert_ne!(
            p,
            instance_prefix(std::path::Path::new("/home/u/.local/state/banger"))
        );
        assert!(banger_sys::net::validate_ifname(&n).is_ok());
    }

    #[test]
    fn every_tap_name_of_every_instance_fits_the_kernel_and_is_recognisably_ours() {
        use rand::{Rng, SeedableRng};
        use std::os::unix::ffi::OsStrExt;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a9);
        for _ in 0..2_000 {
            // Any state dir, UTF-8 or not.
            let len = rng.gen_range(0..200);
            let dir: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            let prefix = instance_prefix(std::path::Path::new(std::ffi::OsStr::from_bytes(&dir)));
            for _ in 0..50 {
                let n = new_tap_name(&prefix);
                assert!(n.len() <= 15, "{n:?} is over 15 bytes");
                assert!(banger_sys::net::validate_ifname(&n).is_ok(), "{n:?}");
                let suffix = n
                    .strip_prefix(prefix.as_str())
                    .expect("the instance prefix");
                assert!(n.starts_with(TAP_PREFIX), "{n:?}");
                assert!(
                    prefix.len() + suffix.len() == 15
                        && n[TAP_PREFIX.len()..]
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                    "{n:?}"
                );
            }
        }
    }

    #[test]
    fn a_pool_never_holds_more_than_its_size_under_any_sequence() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x7a9);
        let mut pool = TapPool::default();
        let mut model: Vec<String> = Vec::new();
        for i in 0..20_000 {
            let size = rng.gen_range(0..4);
            match rng.gen_range(0..3) {
                0 => {
                    let tap = format!("t{i}");
                    let back = pool.offer(tap.clone(), size);
                    if model.len() < size {
                        assert_eq!(back, None);
                        model.push(tap);
                    } else {
                        assert_eq!(back, Some(tap));
                    }
                }
                1 => assert_eq!(pool.take(), model.pop()),
                _ => assert_eq!(pool.missing(size), size.saturating_sub(model.len())),
            }
            assert!(model.iter().all(|t| pool.contains(t)));
        }
        assert_eq!(pool.drain(), model);
    }
}
