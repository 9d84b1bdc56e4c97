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
