//! Snapshots at the engine boundary: the words an engine and the lifecycle
//! share. A snapshot directory holds what the engine wrote ([`STATE_FILE`],
//! the device state; [`RAM_FILE`], the guest's memory) and the lifecycle's
//! manifest; the disks are not in it. Each writable drive is a chain of
//! copy-on-write [`Layer`]s: at a snapshot the engine moves the VM onto a
//! fresh empty layer ([`Switch`]) and the layer it leaves is frozen, so a
//! snapshot costs what the guest changed since the last one, not the size
//! of its disks. Which layers a snapshot needs is the lifecycle's record
//! (`vm::snapshot`).

use super::DriveFormat;
use std::path::PathBuf;

/// The engine's device state, in a snapshot directory.
pub const STATE_FILE: &str = "device.state";
/// The guest's RAM, in a snapshot directory (sparse: untouched pages are holes).
pub const RAM_FILE: &str = "guest.ram";

/// One copy-on-write layer of a drive: a file and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub path: PathBuf,
    pub format: DriveFormat,
}

/// A drive moving to a new top layer at a snapshot: the engine finds the
/// drive whose top layer is `current` and puts `overlay` (made by
/// `Engine::create_layer` over it) on top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub current: PathBuf,
    pub overlay: PathBuf,
}

/// How a restored VM gets the snapshot's RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamMapping {
    /// A copy of its own, mapped shared: the VM can be snapshotted again
    /// without its RAM going through the device state, and the snapshot
    /// can be restored again.
    Copy,
    /// The snapshot's file mapped privately (copy-on-write): VMs restored
    /// from one snapshot share the pages none of them changed.
    Private,
}

/// What a snapshot cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotReport {
    /// How long the guest was paused.
    pub paused_ms: u64,
}

impl DriveFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DriveFormat::Raw => "raw",
            DriveFormat::Qcow2 => "qcow2",
        }
    }

    pub fn parse(s: &str) -> Option<DriveFormat> {
        match s {
            "raw" => Some(DriveFormat::Raw),
            "qcow2" => Some(DriveFormat::Qcow2),
            _ => None,
        }
    }
}
