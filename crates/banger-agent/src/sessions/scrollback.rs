//! A session's output kept in memory, bounded: a byte ring that forgets the
//! oldest bytes once it holds its capacity, addressed by absolute offsets in
//! the session's whole output. Owns the bound and the offset arithmetic;
//! owns nothing about who reads or writes.

use std::collections::VecDeque;

/// Bytes of output a session keeps by default. In memory (the guest has no
/// disk of its own to spare), so a chatty session costs at most this much
/// RAM however long it runs.
pub const SCROLLBACK_BYTES: usize = 4 << 20;

#[derive(Debug)]
pub struct Scrollback {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// Absolute offset of `bytes[0]`.
    start: u64,
}

impl Scrollback {
    pub fn new(capacity: usize) -> Self {
        Scrollback {
            bytes: VecDeque::new(),
            capacity: capacity.max(1),
            start: 0,
        }
    }

    /// The first offset still held.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Bytes produced so far: the offset the next byte gets.
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Appends `data`, forgetting the oldest bytes beyond the capacity.
    pub fn push(&mut self, data: &[u8]) {
        let keep = &data[data.len().saturating_sub(self.capacity)..];
        let skipped = (data.len() - keep.len()) as u64;
        let overflow = (self.bytes.len() + keep.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.start += overflow as u64 + skipped;
        self.bytes.extend(keep);
    }

    /// Up to `max` bytes from `offset` (or from [`Self::start`] if `offset`
    /// was already forgotten), with the offset they actually start at.
    pub fn read(&self, offset: u64, max: usize) -> (u64, Vec<u8>) {
        let from = offset.clamp(self.start, self.end());
        let skip = (from - self.start) as usize;
        let (a, b) = self.bytes.as_slices();
        let mut out = Vec::with_capacity(max.min(self.bytes.len() - skip));
        for part in [&a[skip.min(a.len())..], &b[skip.saturating_sub(a.len())..]] {
            let room = max - out.len();
            out.extend_from_slice(&part[..part.len().min(room)]);
        }
        (from, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_from_any_offset_it_still_holds() {
        let mut ring = Scrollback::new(16);
        ring.push(b"hello ");
        ring.push(b"world");
        assert_eq!(ring.read(0, 100), (0, b"hello world".to_vec()));
        assert_eq!(ring.read(6, 3), (6, b"wor".to_vec()));
        assert_eq!(ring.read(11, 3), (11, Vec::new()));
        assert_eq!(ring.read(99, 3), (11, Vec::new()));
    }

    #[test]
    fn the_oldest_bytes_go_once_it_is_full() {
        let mut ring = Scrollback::new(8);
        ring.push(b"0123456");
        ring.push(b"789ab");
        assert_eq!((ring.start(), ring.end()), (4, 12));
        assert_eq!(ring.bytes.len(), 8);
        assert_eq!(ring.read(0, 100), (4, b"456789ab".to_vec()));
    }

    #[test]
    fn a_write_larger_than_the_ring_keeps_its_tail() {
        let mut ring = Scrollback::new(4);
        ring.push(b"ab");
        ring.push(b"0123456789");
        assert_eq!((ring.start(), ring.end()), (8, 12));
        assert_eq!(ring.read(0, 100).1, b"6789".to_vec());
    }

    #[test]
    fn reads_across_the_wrap_point_are_in_order() {
        let mut ring = Scrollback::new(8);
        for chunk in [&b"abcdef"[..], b"ghij", b"klm"] {
            ring.push(chunk);
        }
        assert_eq!(ring.read(0, 100), (5, b"fghijklm".to_vec()));
        assert_eq!(ring.read(7, 4), (7, b"hijk".to_vec()));
    }
}
