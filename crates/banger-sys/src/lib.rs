//! The only crate that touches the kernel: process spawning and signals,
//! ioctls, mounts, pseudo-terminals, `/proc` inspection. Everything here sits
//! behind small traits or plain functions so the rest of banger is logic that
//! unit tests drive with fakes.

pub mod archive;
pub mod clock;
pub mod command;
pub mod fs;
pub mod guest;
pub mod net;
pub mod peer;
pub mod private_dir;
pub mod process;
pub mod pty;
pub mod spawn;
