//! banger's domain: VM lifecycle (one file per operation), the SQLite store,
//! engines, disks, the agent client, operations with stages, reconcile.
//! No HTTP here (that is `bangerd`), no kernel calls (that is `banger-sys`).

#![forbid(unsafe_code)]

pub mod agent;
pub mod config;
pub mod disks;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod images;
pub mod manager;
pub mod net;
pub mod ops;
pub mod ssh;
pub mod store;
pub mod vm;

pub use error::Error;
pub use manager::Manager;

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
