//! Which of the initramfs's kernel modules this guest needs. The image
//! carries every virtio module banger may use (disks, the agent's port,
//! network, vsock), but a guest without a network device need not load
//! `virtio_net` and its helpers, and no QEMU guest has a vsock device:
//! under TCG each module costs 6-30 ms of boot.
//!
//! A module is a *driver* of the virtio device ids its `.modinfo` section
//! names (`alias=virtio:d00000001v*`), which the image build wrote into the
//! module list with its dependencies ([`banger_proto::modules`]), so no
//! module is read unless it is loaded. The decision, made as each module's
//! turn comes (the list is in load order, so the transport, virtio_mmio,
//! is loaded before the first driver and its devices are on the bus):
//!
//! 1. a driver is needed when the bus lists one of its devices, or when the
//!    bus lists no device at all (nothing is known yet: load it);
//! 2. a module others in the list depend on (`depends=`) is needed when one
//!    of them is;
//! 3. any other module (the transport, one the list says nothing about) is
//!    needed.
//!
//! So only a driver whose device is provably absent is skipped, with the
//! helpers nothing else needs.

use std::collections::BTreeSet;
use std::path::Path;

use banger_proto::modules::ListedModule;

/// What a module's `.modinfo` says about its place in the decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// Its name (`virtio_net`, dashes as underscores).
    pub name: String,
    /// The virtio device ids it drives; empty when it is no virtio driver.
    /// `None` inside means a wildcard id (it drives anything).
    pub virtio_ids: Vec<Option<u32>>,
    /// The modules it depends on, dashes as underscores.
    pub depends: Vec<String>,
}

impl ModInfo {
    /// The decision's input for a line of the list; a line that says
    /// nothing gives a module with no ids and no dependencies (needed by
    /// rule 3).
    pub fn from_listed(listed: &ListedModule) -> ModInfo {
        let info = listed.info.clone().unwrap_or_default();
        ModInfo {
            name: listed.name(),
            virtio_ids: info.virtio_ids,
            depends: info.depends,
        }
    }
}

/// Whether `modules[at]` is needed (see the module's doc); `devices` reads
/// the virtio device ids on the bus now, and is called only if the answer
/// depends on them.
pub fn needed(modules: &[ModInfo], at: usize, devices: &mut dyn FnMut() -> BTreeSet<u32>) -> bool {
    let m = &modules[at];
    if !m.virtio_ids.is_empty() {
        let present = devices();
        return present.is_empty()
            || m.virtio_ids
                .iter()
                .any(|id| id.is_none_or(|id| present.contains(&id)));
    }
    let dependents: Vec<usize> = (0..modules.len())
        .filter(|&i| i != at && modules[i].depends.contains(&m.name))
        .collect();
    dependents.is_empty() || dependents.iter().any(|&i| needed(modules, i, devices))
}

/// `read` (the virtio device ids on the bus now) that reads no more once
/// it has found some: the transport's module adds every device on the bus
/// as it loads, before its init returns, and [`needed`] asks for each
/// driver and helper in the list (each look at the bus's sysfs files cost a
/// TCG guest a millisecond or two). Until then it reads every time.
pub fn read_once_found(mut read: impl FnMut() -> BTreeSet<u32>) -> impl FnMut() -> BTreeSet<u32> {
    let mut found: Option<BTreeSet<u32>> = None;
    move || {
        if let Some(found) = &found {
            return found.clone();
        }
        let now = read();
        if !now.is_empty() {
            found = Some(now.clone());
        }
        now
    }
}

/// The virtio device ids under `bus` (`/sys/bus/virtio/devices`): each
/// device's `device` file, `0x0001`.
pub fn virtio_devices(bus: &Path) -> BTreeSet<u32> {
    let Ok(dir) = std::fs::read_dir(bus) else {
        return BTreeSet::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("device")).ok())
        .filter_map(|id| u32::from_str_radix(id.trim().trim_start_matches("0x"), 16).ok())
        .collect()
}

/// What Linux's `sign-file` appends last to a module it signs.
const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";
/// Bytes of `struct module_signature`, between the signature and the marker.
const SIGNATURE_INFO: usize = 12;

/// `module` without the signature `sign-file` appended to it: the
/// signature, its `struct module_signature` (signer and key id lengths in
/// bytes 3 and 4, the signature's length big-endian in the last four) and
/// the marker. A module with no signature, or one that does not add up, is
/// returned whole.
pub fn without_signature(module: &[u8]) -> &[u8] {
    let Some(body) = module.strip_suffix(SIGNATURE_MARKER) else {
        return module;
    };
    let Some(info_at) = body.len().checked_sub(SIGNATURE_INFO) else {
        return module;
    };
    let info = &body[info_at..];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    let appended = sig_len + usize::from(info[3]) + usize::from(info[4]);
    match info_at.checked_sub(appended) {
        Some(end) => &module[..end],
        None => module,
    }
}

#[cfg(test)]
#[path = "modinfo_tests.rs"]
mod tests;
