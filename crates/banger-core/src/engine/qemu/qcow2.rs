//! Empty qcow2 overlays, written here instead of by `qemu-img create`.
//! Spawning `qemu-img` costs ~10 ms (its dynamic linking, mostly): a
//! tenth of a warm start's budget and time a snapshot's guest spends
//! paused. An empty overlay is four clusters, laid out as `qemu-img` (QEMU
//! 7.2) lays them out:
//!
//! | cluster | offset    | what                                          |
//! |---------|-----------|-----------------------------------------------|
//! | 0       | 0         | header (v3, 112 bytes), the backing format    |
//! |         |           | extension, the end of extensions, the backing |
//! |         |           | file's name                                   |
//! | 1       | 0x10000   | refcount table: one entry, cluster 2          |
//! | 2       | 0x20000   | refcount block: 16-bit refcounts, clusters 0-3 are 1 |
//! | 3       | 0x30000   | L1 table, all zero (nothing allocated)        |
//!
//! 64 KiB clusters; an L2 table covers 512 MiB, so one L1 cluster covers
//! 4 TiB, the largest overlay made here. All fields are big-endian.

use std::io::{self, Write};
use std::path::Path;

use crate::engine::DriveFormat;

const MAGIC: u32 = 0x5146_49fb;
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Guest bytes one L1 entry (one L2 table) maps.
const L1_SPAN: u64 = CLUSTER * (CLUSTER / 8);
/// v3 header with the compression type byte, padded to 8.
const HEADER_LEN: u32 = 112;
const BACKING_FORMAT_EXT: u32 = 0xe279_2aca;
const REFCOUNT_TABLE: u64 = CLUSTER;
const REFCOUNT_BLOCK: u64 = 2 * CLUSTER;
const L1_TABLE: u64 = 3 * CLUSTER;

/// Writes at `path` an empty qcow2 of `size` guest bytes over `backing`
/// (a `format` image, named by this exact path in the overlay), on disk
/// when this returns (`fdatasync`, as `qemu-img create` does).
pub fn write_overlay(
    path: &Path,
    backing: &Path,
    format: DriveFormat,
    size: u64,
) -> io::Result<()> {
    let bytes = overlay(backing, format, size)?;
    let mut file = std::fs::File::create(path)?;
    file.write_all(&bytes)?;
    file.sync_data()
}

/// The bytes of the file [`write_overlay`] writes.
pub fn overlay(backing: &Path, format: DriveFormat, size: u64) -> io::Result<Vec<u8>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let l1_size = size.div_ceil(L1_SPAN);
    if l1_size > CLUSTER / 8 {
        return Err(invalid(format!(
            "a {size}-byte overlay is larger than one L1 cluster maps"
        )));
    }
    let name = backing.as_os_str().as_encoded_bytes();
    let format = format.as_str().as_bytes();
    let ext_len = 8 + format.len().next_multiple_of(8);
    let name_at = HEADER_LEN as usize + ext_len + 8;
    if name_at + name.len() > CLUSTER as usize {
        return Err(invalid(format!(
            "backing file name too long ({} bytes)",
            name.len()
        )));
    }

    let mut out = vec![0u8; (L1_TABLE + l1_size * 8) as usize];
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(&MAGIC.to_be_bytes());
    header.extend_from_slice(&3u32.to_be_bytes()); // version
    header.extend_from_slice(&(name_at as u64).to_be_bytes());
    header.extend_from_slice(&(name.len() as u32).to_be_bytes());
    header.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    header.extend_from_slice(&size.to_be_bytes());
    header.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    header.extend_from_slice(&(l1_size as u32).to_be_bytes());
    header.extend_from_slice(&L1_TABLE.to_be_bytes());
    header.extend_from_slice(&REFCOUNT_TABLE.to_be_bytes());
    header.extend_from_slice(&1u32.to_be_bytes()); // refcount table clusters
    header.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    header.extend_from_slice(&0u64.to_be_bytes()); // snapshots' offset
    header.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
    header.extend_from_slice(&0u64.to_be_bytes()); // compatible features
    header.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
    header.extend_from_slice(&4u32.to_be_bytes()); // 16-bit refcounts
    header.extend_from_slice(&HEADER_LEN.to_be_bytes());
    header.resize(HEADER_LEN as usize, 0); // compression type zlib, padding
    header.extend_from_slice(&BACKING_FORMAT_EXT.to_be_bytes());
    header.extend_from_slice(&(format.len() as u32).to_be_bytes());
    header.extend_from_slice(format);
    header.resize(HEADER_LEN as usize + ext_len, 0);
    header.resize(name_at, 0); // the end of extensions: type 0, length 0
    header.extend_from_slice(name);
    out[..header.len()].copy_from_slice(&header);

    let put = |out: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        out[at as usize..at as usize + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut out, REFCOUNT_TABLE, &REFCOUNT_BLOCK.to_be_bytes());
    for cluster in 0..4 {
        put(&mut out, REFCOUNT_BLOCK + cluster * 2, &1u16.to_be_bytes());
    }
    Ok(out)
}

/// The guest size of the image at `path`: a raw file's length, a qcow2's
/// header field. Read without opening the image for writing or locking
/// it (a running QEMU may have it open).
pub fn virtual_size(path: &Path, format: DriveFormat) -> io::Result<u64> {
    match format {
        DriveFormat::Raw => Ok(std::fs::metadata(path)?.len()),
        DriveFormat::Qcow2 => {
            let mut header = [0u8; 32];
            io::Read::read_exact(&mut std::fs::File::open(path)?, &mut header)?;
            if header[..4] != MAGIC.to_be_bytes() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a qcow2 image", path.display()),
                ));
            }
            Ok(u64::from_be_bytes(
                header[24..32].try_into().expect("8 bytes"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str], path: &Path) -> Option<std::process::Output> {
        Command::new("qemu-img").args(args).arg(path).output().ok()
    }

    /// What `qemu-img` itself makes, byte for byte, where the two agree on
    /// layout; and `qemu-img check` and `compare` pass on ours.
    #[test]
    fn an_overlay_is_what_qemu_img_makes_and_reads_as_its_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 512)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&base, &data).unwrap();
        let ours = dir.path().join("ours.qcow2");
        write_overlay(&ours, &base, DriveFormat::Raw, data.len() as u64).unwrap();
        assert_eq!(
            virtual_size(&ours, DriveFormat::Qcow2).unwrap(),
            data.len() as u64
        );

        let Some(check) = qemu_img(&["check"], &ours) else {
            eprintln!("skipped the qemu-img half: no qemu-img (apt-get install qemu-utils)");
            return;
        };
        assert!(
            check.status.success(),
            "qemu-img check: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let info = qemu_img(&["info", "--output=json"], &ours).unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["virtual-size"], data.len() as u64);
        assert_eq!(info["backing-filename"], base.to_str().unwrap());
        assert_eq!(info["backing-filename-format"], "raw");
        let same = Command::new("qemu-img")
            .args(["compare", "-f", "qcow2", "-F", "raw"])
            .arg(&ours)
            .arg(&base)
            .status()
            .unwrap();
        assert!(same.success(), "the overlay reads as its base");

        let theirs = dir.path().join("theirs.qcow2");
        let made = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&theirs)
            .status()
            .unwrap();
        assert!(made.success());
        let (ours, theirs) = (
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap(),
        );
        assert_eq!(ours.len(), theirs.len());
        // The same header but where the backing file's name is: theirs has
        // a feature-name table before it.
        assert_eq!(ours[..8], theirs[..8], "the header");
        assert_eq!(ours[16..0x70], theirs[16..0x70], "the header");
        assert_eq!(ours[0x10000..], theirs[0x10000..], "refcounts and L1");
    }

    #[test]
    fn a_qcow2_base_is_named_with_its_format_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        write_overlay(&base, Path::new("/images/x.raw"), DriveFormat::Raw, 5 << 30).unwrap();
        let top = dir.path().join("top.qcow2");
        let size = virtual_size(&base, DriveFormat::Qcow2).unwrap();
        assert_eq!(size, 5 << 30);
        write_overlay(&top, &base, DriveFormat::Qcow2, size).unwrap();
        let bytes = std::fs::read(&top).unwrap();
        assert_eq!(
            u32::from_be_bytes(bytes[36..40].try_into().unwrap()),
            10,
            "L1 entries"
        );
        let Some(info) = qemu_img(&["info", "-U", "--output=json"], &top) else {
            eprintln!("skipped the qemu-img half: no qemu-img (apt-get install qemu-utils)");
            return;
        };
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["backing-filename-format"], "qcow2");
        assert_eq!(info["virtual-size"], 5u64 << 30);
    }

    #[test]
    fn sizes_past_one_l1_cluster_and_long_names_are_refused() {
        let huge = overlay(Path::new("/b"), DriveFormat::Raw, (4 << 40) + 1).unwrap_err();
        assert!(huge.to_string().contains("L1"), "{huge}");
        let long = "x".repeat(70_000);
        let err = overlay(Path::new(&long), DriveFormat::Raw, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }
}
