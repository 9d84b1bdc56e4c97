//! The ext4 superblock's `s_overhead_clusters`: how many blocks are
//! metadata (superblocks and their backups, group descriptors and the room
//! reserved for them, bitmaps, inode tables, the journal). Linux works it out
//! at every mount, and when the superblock says otherwise it writes its
//! figure back, into the primary superblock and every backup. `mkfs.ext4`
//! and `resize2fs` leave the field 0, so the first mount of every fresh work
//! disk paid that write: about 7 ms of a TCG guest's boot for a 4 GiB disk
//! (its 8 backups). Recording the kernel's own figure when banger makes or
//! grows a filesystem leaves the mount nothing to write.
//!
//! The count is Linux 6.1's `ext4_calculate_overhead` for filesystems
//! without `bigalloc` and `meta_bg`: the first data block, then per group
//! its superblock copy, descriptor blocks and reserved descriptor blocks (in
//! groups that hold a backup), its inode table and two bitmaps, and the
//! journal's length. Any other layout gets no figure ([`overhead_clusters`]
//! is `None`) and the kernel counts it as before: a wrong figure would only
//! cost the write it was meant to save.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use banger_sys::command::{Cmd, CommandError, Runner};

/// Bytes of the superblock, which starts 1024 bytes into the filesystem.
pub const SUPERBLOCK_LEN: usize = 1024;

const MAGIC: u16 = 0xef53;
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
/// `s_jnl_backup_type`: `s_jnl_blocks` holds a copy of the journal inode.
const JNL_BACKUP_BLOCKS: u8 = 1;

/// The superblock of the ext4 filesystem in `image`.
pub fn read_superblock(image: &Path) -> io::Result<[u8; SUPERBLOCK_LEN]> {
    let mut file = File::open(image)?;
    file.seek(SeekFrom::Start(1024))?;
    let mut sb = [0u8; SUPERBLOCK_LEN];
    file.read_exact(&mut sb)?;
    Ok(sb)
}

/// The `s_overhead_clusters` a superblock records (0: none).
pub fn recorded(sb: &[u8; SUPERBLOCK_LEN]) -> u32 {
    u32_at(sb, 0x248)
}

/// What Linux counts as overhead for the filesystem `sb` describes, or
/// `None` for a layout this does not count (see the module doc).
pub fn overhead_clusters(sb: &[u8; SUPERBLOCK_LEN]) -> Option<u32> {
    if u16_at(sb, 0x38) != MAGIC {
        return None;
    }
    let (compat, incompat, ro_compat) = (u32_at(sb, 0x5c), u32_at(sb, 0x60), u32_at(sb, 0x64));
    if incompat & INCOMPAT_META_BG != 0 || ro_compat & RO_COMPAT_BIGALLOC != 0 {
        return None;
    }
    let log_block = u32_at(sb, 0x18);
    if log_block > 6 {
        return None;
    }
    let block = 1024u64 << log_block;
    let wide = incompat & INCOMPAT_64BIT != 0;
    let blocks = u64::from(u32_at(sb, 0x04))
        | if wide {
            u64::from(u32_at(sb, 0x150)) << 32
        } else {
            0
        };
    let first_data = u64::from(u32_at(sb, 0x14));
    let per_group = u64::from(u32_at(sb, 0x20));
    let inodes_per_group = u64::from(u32_at(sb, 0x28));
    let inode_size = u64::from(u16_at(sb, 0x58));
    let desc_size = if wide {
        u64::from(u16_at(sb, 0xfe))
    } else {
        32
    };
    if per_group == 0 || desc_size == 0 || blocks <= first_data {
        return None;
    }
    let groups = (blocks - first_data).div_ceil(per_group);
    let gdt_blocks = groups.div_ceil(block / desc_size);
    let reserved_gdt = u64::from(u16_at(sb, 0xce));
    let inode_table = (inodes_per_group * inode_size).div_ceil(block);
    let backups = [u32_at(sb, 0x24c), u32_at(sb, 0x250)];
    let has_super = |g: u64| -> bool {
        if g == 0 {
            return true;
        }
        if compat & COMPAT_SPARSE_SUPER2 != 0 {
            return backups.iter().any(|&b| u64::from(b) == g);
        }
        if ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g == 1 {
            return true;
        }
        !g.is_multiple_of(2) && [3, 5, 7].iter().any(|&base| is_power_of(g, base))
    };
    let with_super = (0..groups).filter(|&g| has_super(g)).count() as u64;
    let mut total =
        first_data + with_super * (1 + gdt_blocks + reserved_gdt) + groups * (inode_table + 2);
    if compat & COMPAT_HAS_JOURNAL != 0 {
        // An external journal (no inode) takes no blocks here.
        if u32_at(sb, 0xe0) != 0 {
            if sb[0xfd] != JNL_BACKUP_BLOCKS {
                return None;
            }
            let size = u64::from(u32_at(sb, 0x10c + 16 * 4))
                | (u64::from(u32_at(sb, 0x10c + 15 * 4)) << 32);
            total += size / block;
        }
    }
    u32::try_from(total).ok().filter(|&t| u64::from(t) < blocks)
}

/// The `debugfs` command that records `clusters` in a superblock.
pub fn debugfs_command(clusters: u32) -> String {
    format!("ssv overhead_clusters {clusters}")
}

#[derive(Debug, thiserror::Error)]
pub enum OverheadError {
    #[error("could not read the ext4 superblock of {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not record the metadata overhead in {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: CommandError,
    },
}

/// Records [`overhead_clusters`] in `image`'s superblock with `debugfs`;
/// does nothing for a layout it does not count.
pub fn record(runner: &dyn Runner, image: &Path) -> Result<(), OverheadError> {
    let sb = read_superblock(image).map_err(|source| OverheadError::Read {
        path: image.to_path_buf(),
        source,
    })?;
    let Some(clusters) = overhead_clusters(&sb) else {
        return Ok(());
    };
    let cmd = Cmd::new("debugfs")
        .args(["-w", "-R", &debugfs_command(clusters)])
        .arg(image);
    runner
        .run(&cmd)
        .map(drop)
        .map_err(|source| OverheadError::Record {
            path: image.to_path_buf(),
            source,
        })
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

/// A little-endian field of the superblock; every offset read here lies
/// within its [`SUPERBLOCK_LEN`] bytes.
fn u16_at(sb: &[u8], at: usize) -> u16 {
    crate::elf::u16_at(sb, at).unwrap_or_default()
}

fn u32_at(sb: &[u8], at: usize) -> u32 {
    crate::elf::u32_at(sb, at).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn have(tool: &str) -> bool {
        banger_sys::command::which(tool).is_some()
    }

    /// Makes a filesystem the way image builds do (the 32 MiB work seed,
    /// through `crate::ext4::make`'s options), grown to `grow_mib` if set.
    fn seed(dir: &Path, grow_mib: Option<u64>) -> std::path::PathBuf {
        let image = dir.join("seed.ext4");
        File::create(&image).unwrap().set_len(32 << 20).unwrap();
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-T", "default", "-b", "4096", "-E"])
            .arg("root_owner=0:0,resize=268435456")
            .arg(&image)
            .status()
            .unwrap();
        assert!(st.success());
        if let Some(mib) = grow_mib {
            File::options()
                .write(true)
                .open(&image)
                .unwrap()
                .set_len(mib << 20)
                .unwrap();
            let st = Command::new("resize2fs")
                .args(["-f", "-p"])
                .arg(&image)
                .output()
                .unwrap();
            assert!(st.status.success(), "{st:?}");
        }
        image
    }

    #[test]
    fn counts_what_linux_counted_for_the_work_seed_and_its_grown_copy() {
        if !have("mkfs.ext4") || !have("resize2fs") {
            banger_sys::skip_test("needs e2fsprogs (mkfs.ext4, resize2fs)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // Linux 6.1 (Debian's cloud kernel) wrote 6216 into a fresh VM's
        // 4 GiB work disk made this way: 8 groups with a backup, each
        // 1 + 1 + 127 descriptor blocks; 32 groups of 128 + 2; a 1024-block
        // journal.
        let grown = seed(dir.path(), Some(4096));
        let sb = read_superblock(&grown).unwrap();
        assert_eq!(overhead_clusters(&sb), Some(6216));
        assert_eq!(recorded(&sb), 0, "resize2fs records none");

        let runner = banger_sys::command::SystemRunner;
        record(&runner, &grown).unwrap();
        assert_eq!(recorded(&read_superblock(&grown).unwrap()), 6216);
        let fsck = Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(&grown)
            .output()
            .unwrap();
        assert!(fsck.status.success(), "e2fsck after recording: {fsck:?}");
    }

    #[test]
    fn counts_a_single_group_filesystem() {
        if !have("mkfs.ext4") {
            banger_sys::skip_test("needs e2fsprogs (mkfs.ext4)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sb = read_superblock(&seed(dir.path(), None)).unwrap();
        // One group: its superblock, one descriptor block, 127 reserved,
        // the inode table and two bitmaps, and the journal.
        let inode_table = (u64::from(u32_at(&sb, 0x28)) * 256).div_ceil(4096);
        let journal = u64::from(u32_at(&sb, 0x10c + 64)) / 4096;
        assert_eq!(
            overhead_clusters(&sb).map(u64::from),
            Some(1 + 1 + 127 + inode_table + 2 + journal)
        );
    }

    #[test]
    fn layouts_it_does_not_count_get_no_figure() {
        let mut sb = [0u8; SUPERBLOCK_LEN];
        assert_eq!(overhead_clusters(&sb), None, "no magic");
        sb[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&8192u32.to_le_bytes());
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes());
        sb[0x20..0x24].copy_from_slice(&32768u32.to_le_bytes());
        sb[0x28..0x2c].copy_from_slice(&2048u32.to_le_bytes());
        sb[0x58..0x5a].copy_from_slice(&256u16.to_le_bytes());
        // Its superblock, one descriptor block, the inode table, two bitmaps.
        assert_eq!(overhead_clusters(&sb), Some(1 + 1 + 128 + 2));
        sb[0x60..0x64].copy_from_slice(&INCOMPAT_META_BG.to_le_bytes());
        assert_eq!(overhead_clusters(&sb), None, "meta_bg");
        sb[0x60..0x64].copy_from_slice(&0u32.to_le_bytes());
        sb[0x64..0x68].copy_from_slice(&RO_COMPAT_BIGALLOC.to_le_bytes());
        assert_eq!(overhead_clusters(&sb), None, "bigalloc");
    }

    #[test]
    fn sparse_groups_are_powers_of_three_five_and_seven() {
        let sparse: Vec<u64> = (2..60)
            .filter(|&g: &u64| !g.is_multiple_of(2) && [3, 5, 7].iter().any(|&b| is_power_of(g, b)))
            .collect();
        assert_eq!(sparse, [3, 5, 7, 9, 25, 27, 49]);
    }
}
