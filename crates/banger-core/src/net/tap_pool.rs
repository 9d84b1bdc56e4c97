//! The warm tap pool: idle taps made ahead of need (~0.3 ms each), so a
//! bridge-mode boot takes a ready one. Plain bookkeeping; the taps
//! themselves are made and deleted through `banger_sys::net::tap::Taps`.

/// Every tap banger makes starts with this (and fits 15 characters).
pub const TAP_PREFIX: &str = "bgtap";

/// A fresh tap name.
pub fn new_tap_name() -> String {
    format!("{TAP_PREFIX}{:06x}", rand::random::<u32>() & 0xff_ffff)
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
        let n = new_tap_name();
        assert!(n.starts_with(TAP_PREFIX) && n.len() <= 15);
        assert!(banger_sys::net::validate_ifname(&n).is_ok());
    }
}
