//! Getting the kernel's random number generator initialised at boot. Owns
//! only that wait; nothing here hands out random numbers.
//!
//! A fresh guest under TCG has no RDRAND and no virtio-rng, so its CRNG
//! becomes ready only once it has collected enough entropy. In a static
//! glibc binary the `getrandom` crate (used by yamux for its ids) cannot find
//! glibc's `getrandom` and falls back to polling `/dev/random`, which waits
//! for that readiness and does nothing to hasten it: a host connecting early
//! froze the agent for as long as the guest stayed idle. A blocking
//! `getrandom(2)` system call, by contrast, makes the kernel (5.4+) gather
//! jitter entropy itself and returns once the CRNG is ready. So boot makes
//! that call once, in a thread, while it does its other work.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::rand::{GetRandomFlags, getrandom};

/// Starts waiting for the CRNG; join the handle before serving. When it is
/// ready already (RDRAND trusted at boot, as banger's kernel command line
/// asks), no thread is started: a first thread costs a TCG guest ~1 ms.
pub fn spawn_crng_init() -> Option<JoinHandle<Duration>> {
    let mut byte = [0u8; 1];
    if getrandom(&mut byte, GetRandomFlags::NONBLOCK).is_ok() {
        return None;
    }
    let waiter = std::thread::Builder::new()
        .name("crng-init".into())
        .spawn(|| {
            let start = Instant::now();
            let mut byte = [0u8; 1];
            while let Err(rustix::io::Errno::INTR) = getrandom(&mut byte, GetRandomFlags::empty()) {
            }
            start.elapsed()
        })
        .expect("the crng-init thread starts");
    Some(waiter)
}
