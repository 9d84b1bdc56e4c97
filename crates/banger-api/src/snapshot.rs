//! Snapshot wire types: `vm snapshot`, `vm snapshot list|delete`, `vm restore`.

use serde::{Deserialize, Serialize};

/// `POST /v1/vms/{name}/snapshots`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TakeSnapshot {
    /// Defaults to `snap-N`, the first free N.
    #[serde(default)]
    pub name: Option<String>,
    /// Stop the VM once the snapshot is taken, instead of letting it run on.
    #[serde(default)]
    pub stop: bool,
}

/// `POST /v1/vms/{name}/fork`: `count` new running VMs, each a copy of
/// the VM as it is now, named `PREFIX-1` … (`PREFIX` defaults to
/// `NAME-fork`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ForkVm {
    pub count: u32,
    #[serde(default)]
    pub prefix: Option<String>,
}

/// The most forks one request makes.
pub const MAX_FORKS: u32 = 32;

/// One snapshot of a VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub vm: String,
    pub name: String,
    /// What it alone holds on disk: device state, RAM (sparse) and the
    /// disk layers it froze (what the guest changed since the snapshot
    /// before).
    pub size_bytes: u64,
    /// What VMs made from it hold as well (files linked into them, not
    /// copied: its first disk layers, its RAM), freed with the last of
    /// them, not by deleting the snapshot.
    #[serde(default)]
    pub shared_bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
}

/// `POST /v1/vms/{name}/restore`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RestoreSnapshot {
    pub snapshot: String,
}

/// Snapshot names follow the same rule as VM names.
pub fn validate_snapshot_name(name: &str) -> Result<(), String> {
    crate::validate_vm_name(name).map_err(|e| e.replacen("vm name", "snapshot name", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_checked_like_vm_names() {
        assert!(validate_snapshot_name("before-migration").is_ok());
        let e = validate_snapshot_name("../x").unwrap_err();
        assert!(e.starts_with("snapshot name"), "{e}");
    }

    #[test]
    fn take_snapshot_refuses_unknown_fields() {
        assert!(
            serde_json::from_str::<TakeSnapshot>(r#"{"stop":true}"#)
                .unwrap()
                .stop
        );
        assert!(serde_json::from_str::<TakeSnapshot>(r#"{"nmae":"x"}"#).is_err());
    }
}
