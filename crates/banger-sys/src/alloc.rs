//! A counting allocator, so a target can assert that a decoder buffers no
//! more than its documented bound: [`peak_during`] reports the most bytes
//! the current thread held at once, above what it held before, while a
//! closure ran. Counts are per thread, so tests running side by side do
//! not see each other's allocations.
//!
//! Here because it is `unsafe` (banger-sys holds all of it). banger-fuzz
//! installs it as its `#[global_allocator]`; it forwards every call to the
//! system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Counting;

thread_local! {
    // Const-initialised and without a destructor: safe to touch from
    // inside the allocator (no lazy initialisation, no allocation).
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(n: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(n);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(n)));
}

// SAFETY: every method forwards to `System` with the caller's own layout
// and pointer, so `System` upholds the `GlobalAlloc` contract; the
// bookkeeping around it only touches thread-local `Cell`s and never
// allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout (see the impl).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout (see the impl).
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout` (the caller's contract).
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (the caller's contract).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Both blocks exist for a moment during a moving realloc.
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

/// Runs `f` and returns its result with the largest number of bytes this
/// thread held at once while it ran, beyond what it held when it started.
/// Meaningful only in binaries that install [`Counting`] (banger-fuzz's
/// binary and tests); elsewhere it reports 0.
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, peak.saturating_sub(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: Counting = Counting;

    #[test]
    fn a_large_buffer_shows_in_the_peak_and_a_small_one_does_not() {
        let (_, peak) = peak_during(|| std::hint::black_box(vec![0u8; 1 << 20]).len());
        assert!(peak >= 1 << 20, "peak {peak}");
        let (_, peak) = peak_during(|| std::hint::black_box(vec![0u8; 10]).len());
        assert!(peak < 1024, "peak {peak}");
    }
}
