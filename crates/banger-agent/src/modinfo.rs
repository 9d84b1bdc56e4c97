//! Which of the initramfs's kernel modules this guest needs. The image
//! carries every virtio module banger may use (disks, the agent's port,
//! network, vsock), but a guest without a network device need not load
//! `virtio_net` and its helpers, and no QEMU guest has a vsock device:
//! under TCG each module costs 6-30 ms of boot.
//!
//! A module is a *driver* of the virtio device ids its `.modinfo` section
//! names (`alias=virtio:d00000001v*`). The decision, made as each module's
//! turn comes (the list is in load order, so the transport, virtio_mmio,
//! is loaded before the first driver and its devices are on the bus):
//!
//! 1. a driver is needed when the bus lists one of its devices, or when the
//!    bus lists no device at all (nothing is known yet: load it);
//! 2. a module others in the list depend on (`depends=`) is needed when one
//!    of them is;
//! 3. any other module (the transport, one whose `.modinfo` cannot be read,
//!    a compressed one) is needed.
//!
//! So only a driver whose device is provably absent is skipped, with the
//! helpers nothing else needs.

use std::collections::BTreeSet;
use std::path::Path;

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
    /// Reads `file_name`'s `.modinfo` from the ELF `bytes`; a file that is
    /// no readable ELF gives a module with no ids and no dependencies
    /// (needed by rule 3).
    pub fn parse(file_name: &str, bytes: &[u8]) -> ModInfo {
        let name = file_name
            .split('.')
            .next()
            .unwrap_or(file_name)
            .replace('-', "_");
        let mut info = ModInfo {
            name,
            ..ModInfo::default()
        };
        let Some(section) = modinfo_section(bytes) else {
            return info;
        };
        for entry in section.split(|b| *b == 0) {
            let entry = String::from_utf8_lossy(entry);
            if let Some(alias) = entry.strip_prefix("alias=virtio:d") {
                let id = alias.get(..8).and_then(|h| u32::from_str_radix(h, 16).ok());
                info.virtio_ids.push(id);
            } else if let Some(deps) = entry.strip_prefix("depends=") {
                info.depends = deps
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(|d| d.replace('-', "_"))
                    .collect();
            }
        }
        info
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

/// The bytes of the `.modinfo` section of a little-endian ELF64 file.
fn modinfo_section(elf: &[u8]) -> Option<&[u8]> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at =
        |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?) as usize);
    let (shoff, shentsize) = (u64_at(0x28)?, u16_at(0x3a)? as usize);
    let (shnum, shstrndx) = (u16_at(0x3c)? as usize, u16_at(0x3e)? as usize);
    let section = |i: usize| {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let (name, offset, size) = (u32_at(h)? as usize, u64_at(h + 0x18)?, u64_at(h + 0x20)?);
        Some((name, elf.get(offset..offset.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let (name, data) = section(i)?;
        let name = names.get(name..)?.split(|b| *b == 0).next()?;
        (name == b".modinfo").then_some(data)
    })
}

#[cfg(test)]
#[path = "modinfo_tests.rs"]
mod tests;
