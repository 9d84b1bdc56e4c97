//! Just enough ELF64 little-endian reading for image building: the machine
//! type, whether a binary wants a dynamic loader (`PT_INTERP`) or shared
//! libraries (`DT_NEEDED`), the notes of
//! a kernel (the PVH entry note QEMU needs to boot an uncompressed
//! `vmlinux`), and a named section's bytes (a module's `.modinfo`).
//! Every offset is bounds-checked; malformed input yields `None`, never a
//! panic.

pub const MAGIC: &[u8; 4] = b"\x7fELF";
pub const EM_X86_64: u16 = 62;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point, in a note named "Xen".
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// A parsed view over an ELF64 little-endian file held in memory.
pub struct Elf<'a> {
    data: &'a [u8],
}

struct Segment {
    p_type: u32,
    offset: usize,
    vaddr: u64,
    size: usize,
}

impl<'a> Elf<'a> {
    /// `None` unless `data` is a 64-bit little-endian ELF.
    pub fn parse(data: &'a [u8]) -> Option<Elf<'a>> {
        (data.len() >= 64 && data.starts_with(MAGIC) && data[4] == 2 && data[5] == 1)
            .then_some(Elf { data })
    }

    pub fn machine(&self) -> u16 {
        u16_at(self.data, 18).unwrap_or(0)
    }

    /// True for a dynamically linked executable, which cannot run as the
    /// initramfs' `/init` (there is no loader or libc there).
    pub fn has_interp(&self) -> bool {
        self.segments().any(|s| s.p_type == PT_INTERP)
    }

    /// The dynamic loader the binary asks for (`PT_INTERP`), if any.
    pub fn interp(&self) -> Option<String> {
        let s = self.segments().find(|s| s.p_type == PT_INTERP)?;
        let bytes = self.data.get(s.offset..s.offset.checked_add(s.size)?)?;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }

    /// The shared libraries the binary needs (`DT_NEEDED`). A static-pie
    /// has a dynamic segment (for its own relocations) but needs none. A
    /// name that cannot be resolved is reported as `?`, so a needed
    /// library is never missed for want of a string table.
    pub fn needed(&self) -> Vec<String> {
        let Some(dynamic) = self.segments().find(|s| s.p_type == PT_DYNAMIC) else {
            return Vec::new();
        };
        let Some(entries) = self
            .data
            .get(dynamic.offset..dynamic.offset.saturating_add(dynamic.size))
        else {
            return Vec::new();
        };
        let entries: Vec<(u64, u64)> = entries
            .chunks_exact(16)
            .map_while(|e| Some((u64_at(e, 0)?, u64_at(e, 8)?)))
            .take_while(|(tag, _)| *tag != DT_NULL)
            .collect();
        let strtab = entries
            .iter()
            .find(|(tag, _)| *tag == DT_STRTAB)
            .and_then(|(_, vaddr)| self.file_offset(*vaddr));
        entries
            .iter()
            .filter(|(tag, _)| *tag == DT_NEEDED)
            .map(|(_, name)| {
                strtab
                    .and_then(|base| self.c_string(base.checked_add(usize::try_from(*name).ok()?)?))
                    .unwrap_or_else(|| "?".into())
            })
            .collect()
    }

    /// True when the kernel carries a PVH entry note: QEMU can then boot this
    /// uncompressed kernel directly with `-kernel`.
    pub fn has_pvh_entry(&self) -> bool {
        self.segments()
            .filter(|s| s.p_type == PT_NOTE)
            .filter_map(|s| self.data.get(s.offset..s.offset.checked_add(s.size)?))
            .any(|notes| has_note(notes, b"Xen", XEN_ELFNOTE_PHYS32_ENTRY))
    }

    /// The bytes of the section called `name`, if any.
    pub fn section(&self, name: &str) -> Option<&'a [u8]> {
        let d = self.data;
        let shoff = usize::try_from(u64_at(d, 0x28)?).ok()?;
        let shentsize = u16_at(d, 0x3a)? as usize;
        let shnum = u16_at(d, 0x3c)? as usize;
        let shstrndx = u16_at(d, 0x3e)? as usize;
        if shentsize < 0x40 || shstrndx >= shnum {
            return None;
        }
        let header = |i: usize| -> Option<(u32, usize, usize)> {
            let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
            let name = u32_at(d, base)?;
            let offset = usize::try_from(u64_at(d, base + 0x18)?).ok()?;
            let size = usize::try_from(u64_at(d, base + 0x20)?).ok()?;
            Some((name, offset, size))
        };
        let (_, str_off, str_size) = header(shstrndx)?;
        let strtab = d.get(str_off..str_off.checked_add(str_size)?)?;
        (0..shnum).find_map(|i| {
            let (name_off, offset, size) = header(i)?;
            let rest = strtab.get(name_off as usize..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            (&rest[..end] == name.as_bytes())
                .then(|| d.get(offset..offset.checked_add(size)?))
                .flatten()
        })
    }

    /// Where the loaded address `vaddr` is in the file.
    fn file_offset(&self, vaddr: u64) -> Option<usize> {
        self.segments()
            .filter(|s| s.p_type == PT_LOAD)
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.size as u64)
            .and_then(|s| s.offset.checked_add(usize::try_from(vaddr - s.vaddr).ok()?))
    }

    fn c_string(&self, at: usize) -> Option<String> {
        let rest = self.data.get(at..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        let d = self.data;
        let phoff = u64_at(d, 0x20)
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(0);
        let phentsize = u16_at(d, 0x36).unwrap_or(0) as usize;
        let phnum = if phentsize >= 0x38 {
            u16_at(d, 0x38).unwrap_or(0) as usize
        } else {
            0
        };
        (0..phnum).filter_map(move |i| {
            let base = phoff.checked_add(i.checked_mul(phentsize)?)?;
            Some(Segment {
                p_type: u32_at(d, base)?,
                offset: usize::try_from(u64_at(d, base + 8)?).ok()?,
                vaddr: u64_at(d, base + 0x10)?,
                size: usize::try_from(u64_at(d, base + 0x20)?).ok()?,
            })
        })
    }
}

/// Walks a note segment: `namesz`, `descsz`, `type`, then name and desc,
/// each padded to 4 bytes.
fn has_note(mut notes: &[u8], want_name: &[u8], want_type: u32) -> bool {
    while notes.len() >= 12 {
        let (Some(namesz), Some(descsz), Some(n_type)) =
            (u32_at(notes, 0), u32_at(notes, 4), u32_at(notes, 8))
        else {
            return false;
        };
        let name_end = 12 + namesz as usize;
        let Some(name) = notes.get(12..name_end) else {
            return false;
        };
        if n_type == want_type && name.strip_suffix(b"\0").unwrap_or(name) == want_name {
            return true;
        }
        let next = name_end.next_multiple_of(4) + (descsz as usize).next_multiple_of(4);
        let Some(rest) = notes.get(next..) else {
            return false;
        };
        notes = rest;
    }
    false
}

pub fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Builders of synthetic ELF files for tests across the crate.
#[cfg(test)]
pub(crate) mod testing {
    /// An x86_64 ELF64 with the given program segments (type, payload) and
    /// named sections (name, payload). Good enough for [`super::Elf`], not
    /// for a loader.
    pub fn build(segments: &[(u32, Vec<u8>)], sections: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(super::MAGIC);
        out[4] = 2; // 64-bit
        out[5] = 1; // little-endian
        out[6] = 1;
        out[16] = 2; // ET_EXEC
        out[18..20].copy_from_slice(&super::EM_X86_64.to_le_bytes());

        let mut seg_offsets = Vec::new();
        for (_, payload) in segments {
            seg_offsets.push(out.len());
            out.extend_from_slice(payload);
        }
        let mut shstrtab = vec![0u8];
        let mut sec_entries = vec![(0u32, 0usize, 0usize)];
        for (name, payload) in sections {
            let name_off = shstrtab.len() as u32;
            shstrtab.extend_from_slice(name.as_bytes());
            shstrtab.push(0);
            sec_entries.push((name_off, out.len(), payload.len()));
            out.extend_from_slice(payload);
        }
        let strtab_name = shstrtab.len() as u32;
        shstrtab.extend_from_slice(b".shstrtab\0");
        sec_entries.push((strtab_name, out.len(), shstrtab.len()));
        out.extend_from_slice(&shstrtab);

        out.resize(out.len().next_multiple_of(8), 0);
        let phoff = out.len();
        for ((p_type, payload), offset) in segments.iter().zip(&seg_offsets) {
            let mut ph = vec![0u8; 0x38];
            ph[0..4].copy_from_slice(&p_type.to_le_bytes());
            ph[8..16].copy_from_slice(&(*offset as u64).to_le_bytes());
            ph[0x20..0x28].copy_from_slice(&(payload.len() as u64).to_le_bytes());
            out.extend_from_slice(&ph);
        }
        let shoff = out.len();
        for (name, offset, size) in &sec_entries {
            let mut sh = vec![0u8; 0x40];
            sh[0..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(*offset as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(*size as u64).to_le_bytes());
            out.extend_from_slice(&sh);
        }
        out[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        out[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        out[0x38..0x3a].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&(sec_entries.len() as u16).to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&((sec_entries.len() - 1) as u16).to_le_bytes());
        out
    }

    /// A note segment payload holding one note.
    pub fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&n_type.to_le_bytes());
        n.extend_from_slice(name);
        n.push(0);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    /// A kernel-like ELF with a PVH entry note after another note.
    pub fn pvh_kernel() -> Vec<u8> {
        let mut notes = note(b"GNU", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(b"Xen", 18, &0x100_0000u32.to_le_bytes()));
        build(&[(4, notes)], &[])
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn pvh_note_is_found_among_other_notes() {
        let elf = pvh_kernel();
        let parsed = Elf::parse(&elf).unwrap();
        assert_eq!(parsed.machine(), EM_X86_64);
        assert!(parsed.has_pvh_entry());
        assert!(!parsed.has_interp());
    }

    #[test]
    fn kernel_without_pvh_note_is_detected() {
        let elf = build(&[(4, note(b"GNU", 3, &[0; 16]))], &[]);
        assert!(!Elf::parse(&elf).unwrap().has_pvh_entry());
    }

    #[test]
    fn dynamic_executable_is_detected() {
        let elf = build(&[(3, b"/lib64/ld-linux-x86-64.so.2\0".to_vec())], &[]);
        assert!(Elf::parse(&elf).unwrap().has_interp());
    }

    #[test]
    fn named_section_is_returned() {
        let elf = build(
            &[],
            &[
                (".text", vec![0x90; 8]),
                (".modinfo", b"license=GPL\0".to_vec()),
            ],
        );
        let parsed = Elf::parse(&elf).unwrap();
        assert_eq!(parsed.section(".modinfo"), Some(&b"license=GPL\0"[..]));
        assert_eq!(parsed.section(".missing"), None);
    }

    #[test]
    fn truncated_or_foreign_input_is_not_an_elf_and_never_panics() {
        assert!(Elf::parse(b"\x7fELF").is_none());
        assert!(Elf::parse(&[0u8; 100]).is_none());
        let mut elf = pvh_kernel();
        elf.truncate(70);
        let parsed = Elf::parse(&elf).unwrap();
        assert!(!parsed.has_pvh_entry());
        assert!(parsed.section(".modinfo").is_none());
    }
}
