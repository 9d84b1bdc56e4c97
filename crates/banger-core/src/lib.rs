//! banger's domain: the VM lifecycle (one file per operation) with its
//! capability pipeline, the engines behind their trait, images, networking,
//! operations with stages, the SQLite store and reconcile. Each concern is
//! a service with private state ([`Services`] wires them); bangerd's
//! handlers call their APIs. No HTTP here (that is `bangerd`), no kernel
//! calls (that is `banger-sys`).

#![forbid(unsafe_code)]

pub mod agent;
pub mod capability;
pub mod config;
pub mod console;
pub mod disks;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod fault;
pub mod images;
pub mod layout;
pub mod net;
pub mod ops;
pub mod services;
pub mod session;
pub mod space;
pub mod ssh;
pub mod store;
pub mod vm;
pub mod workspace;

#[cfg(test)]
pub(crate) mod testing;

pub use error::Error;
pub use services::{Deps, Services};
