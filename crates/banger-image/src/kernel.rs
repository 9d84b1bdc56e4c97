//! Recognising kernel images and turning a bzImage into the uncompressed ELF
//! `vmlinux` that QEMU's `-M microvm` boots fastest (through its PVH entry).
//! Owns the kernel's file in the image directory; not the modules
//! ([`crate::modules`]) nor the command line.
//!
//! How a vmlinux comes out of Debian's `vmlinuz` (an LZ4-compressed bzImage):
//!
//! 1. Find the LZ4 *legacy* magic `02 21 4c 18`. The payload's copy is the
//!    first one, but the bytes can also occur by chance elsewhere, so every
//!    occurrence is tried until one decodes to an ELF.
//! 2. After the magic come blocks: a u32 little-endian compressed length,
//!    then a plain LZ4 block that decompresses to at most 8 MiB.
//! 3. The stream ends at a length that cannot be a block: zero, larger than
//!    an 8 MiB block can compress to, larger than the bytes left, or equal to
//!    the bytes decoded so far (the size footer the kernel's build appends).
//!    Another magic in place of a length starts a further frame.
//! 4. The result must be an x86_64 ELF with a PVH entry note; otherwise the
//!    bzImage is kept as it is (QEMU boots that too, only slower).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::elf::{self, Elf};
use crate::layout;

pub const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// Uncompressed size of every legacy block but the last.
const LEGACY_BLOCK: usize = 8 << 20;
/// LZ4's worst-case compressed size of one legacy block.
const MAX_COMPRESSED_BLOCK: usize = LEGACY_BLOCK + LEGACY_BLOCK / 255 + 16;
/// Refuse to inflate beyond this, whatever the input claims.
const MAX_VMLINUX: usize = 1 << 30;
/// Offset of the `HdrS` signature in an x86 boot sector.
const BZIMAGE_SIGNATURE_AT: usize = 0x202;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("could not read kernel {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not write kernel {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is neither an ELF vmlinux nor an x86 bzImage: pass the kernel image (vmlinux or vmlinuz)"
    )]
    NotAKernel { path: PathBuf },
    #[error("{path} is an ELF for machine {machine}, not x86_64: pass an x86_64 kernel")]
    WrongMachine { path: PathBuf, machine: u16 },
    #[error(
        "{path} is an ELF kernel without a PVH entry note, which QEMU needs to boot it: \
         pass its bzImage instead, or build the kernel with CONFIG_PVH=y"
    )]
    NoPvhEntry { path: PathBuf },
}

/// What kind of kernel file a header looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    Elf,
    BzImage,
}

/// Classifies a kernel by its first bytes (at least 0x206 for a bzImage).
pub fn detect(head: &[u8]) -> Option<KernelKind> {
    if head.starts_with(elf::MAGIC) {
        Some(KernelKind::Elf)
    } else if head.get(BZIMAGE_SIGNATURE_AT..BZIMAGE_SIGNATURE_AT + 4) == Some(b"HdrS") {
        Some(KernelKind::BzImage)
    } else {
        None
    }
}

/// The kernel file placed in an image directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedKernel {
    /// [`layout::VMLINUX`] or [`layout::BZIMAGE`].
    pub file_name: &'static str,
    /// From the kernel's own version string, when it has a readable one.
    pub version: Option<String>,
    /// True when a vmlinux was decompressed out of a bzImage.
    pub extracted: bool,
}

/// Validates the kernel at `src` and writes it into `dest_dir` as a
/// `vmlinux` (an ELF as is, or extracted from an LZ4 bzImage) or, failing
/// that, as the `bzImage` it is.
pub fn prepare(src: &Path, dest_dir: &Path) -> Result<PreparedKernel, KernelError> {
    let data = fs::read(src).map_err(|source| KernelError::Read {
        path: src.to_path_buf(),
        source,
    })?;
    let write = |name: &'static str, bytes: &[u8]| {
        let path = dest_dir.join(name);
        fs::write(&path, bytes).map_err(|source| KernelError::Write { path, source })
    };
    match detect(&data) {
        Some(KernelKind::Elf) => {
            let parsed = Elf::parse(&data).ok_or_else(|| KernelError::NotAKernel {
                path: src.to_path_buf(),
            })?;
            if parsed.machine() != elf::EM_X86_64 {
                return Err(KernelError::WrongMachine {
                    path: src.to_path_buf(),
                    machine: parsed.machine(),
                });
            }
            if !parsed.has_pvh_entry() {
                return Err(KernelError::NoPvhEntry {
                    path: src.to_path_buf(),
                });
            }
            write(layout::VMLINUX, &data)?;
            Ok(PreparedKernel {
                file_name: layout::VMLINUX,
                version: elf_version(&data),
                extracted: false,
            })
        }
        Some(KernelKind::BzImage) => {
            let version = bzimage_version(&data);
            if let Some(vmlinux) = extract_vmlinux(&data) {
                write(layout::VMLINUX, &vmlinux)?;
                return Ok(PreparedKernel {
                    file_name: layout::VMLINUX,
                    version,
                    extracted: true,
                });
            }
            write(layout::BZIMAGE, &data)?;
            Ok(PreparedKernel {
                file_name: layout::BZIMAGE,
                version,
                extracted: false,
            })
        }
        None => Err(KernelError::NotAKernel {
            path: src.to_path_buf(),
        }),
    }
}

/// Finds the LZ4 legacy stream in a bzImage and decodes it; `Some` only for
/// an x86_64 ELF that QEMU can boot directly (it has a PVH entry note).
pub fn extract_vmlinux(bzimage: &[u8]) -> Option<Vec<u8>> {
    let mut from = 0;
    while let Some(pos) = find(&bzimage[from..], &LZ4_LEGACY_MAGIC) {
        let start = from + pos + LZ4_LEGACY_MAGIC.len();
        if let Some(out) = decode_lz4_legacy(&bzimage[start..])
            && Elf::parse(&out).is_some_and(|e| e.machine() == elf::EM_X86_64 && e.has_pvh_entry())
        {
            return Some(out);
        }
        from = start;
    }
    None
}

/// Decodes the legacy LZ4 blocks that follow a magic (`stream` starts right
/// after it). `None` when a block does not decode or nothing was decoded.
pub fn decode_lz4_legacy(stream: &[u8]) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 0;
    while let Some(len) = elf::u32_at(stream, pos) {
        if len.to_le_bytes() == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let len = len as usize;
        let remaining = stream.len() - pos - 4;
        let is_footer = !out.is_empty() && len == out.len();
        if len == 0 || len > MAX_COMPRESSED_BLOCK || len > remaining || is_footer {
            break;
        }
        if out.len() + LEGACY_BLOCK > MAX_VMLINUX {
            return None;
        }
        let block = &stream[pos + 4..pos + 4 + len];
        let start = out.len();
        out.resize(start + LEGACY_BLOCK, 0);
        let n = lz4_flex::block::decompress_into(block, &mut out[start..]).ok()?;
        out.truncate(start + n);
        pos += 4 + len;
    }
    (!out.is_empty()).then_some(out)
}

/// The release from a bzImage's setup header (`kernel_version` pointer at
/// 0x20e, relative to 0x200).
pub fn bzimage_version(data: &[u8]) -> Option<String> {
    let ptr = elf::u16_at(data, 0x20e)? as usize;
    if ptr == 0 {
        return None;
    }
    first_token(data.get(ptr + 0x200..)?)
}

/// The release from the `Linux version <release> (...)` banner in a vmlinux.
pub fn elf_version(data: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(pos) = find(&data[from..], BANNER) {
        let at = from + pos + BANNER.len();
        if let Some(v) =
            first_token(&data[at..]).filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        {
            return Some(v);
        }
        from = at;
    }
    None
}

fn first_token(bytes: &[u8]) -> Option<String> {
    let end = bytes
        .iter()
        .take(128)
        .position(|&b| b == 0 || b == b' ' || b == b'\n')?;
    let token = std::str::from_utf8(&bytes[..end]).ok()?;
    (!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())).then(|| token.to_string())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::testing;

    /// A fake vmlinux bigger than one legacy block, compressible but not
    /// trivially so.
    fn fake_vmlinux(len: usize) -> Vec<u8> {
        let mut data = testing::pvh_kernel();
        let banner =
            b"Linux version 6.1.0-99-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        data.extend_from_slice(banner);
        let mut x: u32 = 1;
        while data.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            data.push(if x >> 28 == 0 { (x >> 16) as u8 } else { b'k' });
        }
        data
    }

    /// Frames `data` as the kernel's build does: magic, length-prefixed
    /// blocks of 8 MiB, then the uncompressed size as a footer.
    fn legacy_stream(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(LEGACY_BLOCK) {
            let block = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend_from_slice(&block);
        }
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    /// A bzImage-like file: a setup header with `HdrS` and a version string,
    /// a decoy magic, the payload, then trailing code.
    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        bz[0x300..0x300 + 27].copy_from_slice(b"6.1.0-99-cloud-amd64 (x) #1");
        bz.extend_from_slice(&LZ4_LEGACY_MAGIC);
        bz.extend_from_slice(&[0xff; 12]);
        bz.extend_from_slice(&legacy_stream(payload));
        bz.extend_from_slice(&[0x31, 0xc0, 0x48, 0x8d, 0, 0, 0, 0]);
        bz
    }

    #[test]
    fn multi_block_legacy_stream_round_trips() {
        let vmlinux = fake_vmlinux(LEGACY_BLOCK * 2 + 12345);
        let stream = legacy_stream(&vmlinux);
        assert_eq!(decode_lz4_legacy(&stream[4..]).unwrap(), vmlinux);
    }

    #[test]
    fn vmlinux_is_found_past_a_decoy_magic_and_before_trailing_code() {
        let vmlinux = fake_vmlinux(LEGACY_BLOCK + 100);
        assert_eq!(extract_vmlinux(&fake_bzimage(&vmlinux)).unwrap(), vmlinux);
    }

    #[test]
    fn stream_ending_at_end_of_data_decodes() {
        let vmlinux = fake_vmlinux(5000);
        let mut stream = legacy_stream(&vmlinux);
        stream.truncate(stream.len() - 4);
        assert_eq!(decode_lz4_legacy(&stream[4..]).unwrap(), vmlinux);
    }

    #[test]
    fn non_elf_payload_is_not_taken_for_a_vmlinux() {
        let bz = fake_bzimage(&vec![b'z'; 70_000]);
        assert_eq!(extract_vmlinux(&bz), None);
    }

    #[test]
    fn corrupt_block_yields_nothing() {
        let mut stream = legacy_stream(&fake_vmlinux(20_000));
        let len = stream.len();
        stream[len - 40..len - 4].fill(0xff);
        assert_eq!(decode_lz4_legacy(&stream[4..]), None);
    }

    #[test]
    fn versions_are_read_from_bzimage_header_and_elf_banner() {
        let vmlinux = fake_vmlinux(1000);
        assert_eq!(
            elf_version(&vmlinux).as_deref(),
            Some("6.1.0-99-cloud-amd64")
        );
        assert_eq!(
            bzimage_version(&fake_bzimage(&vmlinux)).as_deref(),
            Some("6.1.0-99-cloud-amd64")
        );
    }

    #[test]
    fn prepare_extracts_vmlinux_from_an_lz4_bzimage() {
        let dir = tempfile::tempdir().unwrap();
        let vmlinux = fake_vmlinux(3000);
        let src = dir.path().join("vmlinuz");
        fs::write(&src, fake_bzimage(&vmlinux)).unwrap();
        let k = prepare(&src, dir.path()).unwrap();
        assert_eq!(
            k,
            PreparedKernel {
                file_name: "vmlinux",
                version: Some("6.1.0-99-cloud-amd64".into()),
                extracted: true
            }
        );
        assert_eq!(fs::read(dir.path().join("vmlinux")).unwrap(), vmlinux);
    }

    #[test]
    fn prepare_keeps_a_bzimage_it_cannot_decompress() {
        let dir = tempfile::tempdir().unwrap();
        let mut bz = vec![0u8; 0x1000];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let src = dir.path().join("vmlinuz");
        fs::write(&src, &bz).unwrap();
        assert_eq!(prepare(&src, dir.path()).unwrap().file_name, "bzImage");
        assert_eq!(fs::read(dir.path().join("bzImage")).unwrap(), bz);
    }

    #[test]
    fn prepare_rejects_files_that_are_not_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("notes.txt");
        fs::write(&src, b"just some text, not a kernel").unwrap();
        let err = prepare(&src, dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is neither an ELF vmlinux nor an x86 bzImage: pass the kernel image (vmlinux or vmlinuz)",
                src.display()
            )
        );
    }

    #[test]
    fn prepare_rejects_an_elf_without_pvh_entry() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("vmlinux-nopvh");
        fs::write(&src, testing::build(&[], &[])).unwrap();
        assert!(matches!(
            prepare(&src, dir.path()),
            Err(KernelError::NoPvhEntry { .. })
        ));
    }
}
