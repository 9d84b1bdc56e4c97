//! The only crate that touches the kernel: process spawning and signals,
//! ioctls, mounts, pseudo-terminals, `/proc` inspection. Everything here sits
//! behind small traits or plain functions so the rest of banger is logic that
//! unit tests drive with fakes.

pub mod alloc;
pub mod archive;
pub mod cancel;
pub mod clock;
pub mod command;
pub mod fdpass;
pub mod fs;
pub mod guest;
pub mod net;
pub mod peer;
pub mod private_dir;
pub mod process;
pub mod pty;
pub mod spawn;
pub mod vfork;

/// For a test that needs something this host may lack: prints
/// `SKIPPED: why` so the run shows it, or panics where the suite must run
/// in full (`BANGER_E2E_REQUIRED=1`, as CI sets).
pub fn skip_test(why: &str) {
    if std::env::var_os("BANGER_E2E_REQUIRED").is_some_and(|v| v == "1") {
        panic!("{why}, and BANGER_E2E_REQUIRED=1 forbids skipping");
    }
    println!("SKIPPED: {why}");
}
