//! ext4 images made from directory trees, without mounting anything and
//! without privileges: `mkfs.ext4 -d <tree>` copies the tree in, then
//! `debugfs -w` fixes what `-d` cannot express. Owns the mkfs options every
//! banger filesystem shares; what goes into a tree is [`crate::rootfs`] and
//! [`crate::work_seed`]'s business.
//!
//! 1. Create the image file sparse at its final size.
//! 2. `mkfs.ext4 -q -F -T default -b 4096 -L <label>
//!    -E root_owner=0:0,resize=<1 TiB> -d <tree> <image>`. `-T default`
//!    because e2fsprogs 1.47's "small" profile (picked below 512 MiB) makes
//!    filesystems that `resize2fs` fails to grow; `resize=` reserves group
//!    descriptor room so a 32 MiB work seed grows to a large disk quickly.
//! 3. `-d` copies each file's host owner and does not copy the tree root's
//!    mode. When the build runs unprivileged its files are owned by the build
//!    user, so a `debugfs` script (on stdin) gives every such inode the owner
//!    it should have ([`Owners`]: root, or what a tarball recorded) and the
//!    root directory its mode, and records the metadata overhead the kernel
//!    would otherwise count and write back at the first mount
//!    ([`crate::overhead`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use banger_sys::command::{Cmd, CommandError, Runner};

/// Byte offset of the superblock's `s_magic`.
const MAGIC_OFFSET: usize = 1024 + 0x38;
const MAGIC: [u8; 2] = [0x53, 0xef];
const BLOCK: u64 = 4096;
/// Growth headroom reserved at mkfs time (1 TiB of 4 KiB blocks).
const RESIZE_BLOCKS: u64 = (1 << 40) / BLOCK;

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("could not create the filesystem image {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not read the tree {path} to put into an ext4 image")]
    ReadTree {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not make an ext4 filesystem in {path}")]
    Mkfs {
        path: PathBuf,
        #[source]
        source: CommandError,
    },
    #[error("could not set owners and modes in {path}")]
    Fixup {
        path: PathBuf,
        #[source]
        source: CommandError,
    },
    #[error("debugfs could not set owners and modes in {path}:\n  {detail}")]
    FixupRejected { path: PathBuf, detail: String },
}

/// One filesystem to make.
#[derive(Debug, Clone)]
pub struct Ext4Spec<'a> {
    pub tree: &'a Path,
    pub image: &'a Path,
    pub label: &'a str,
    pub size_bytes: u64,
    /// Permission bits for the filesystem's root directory (default 0755).
    pub root_mode: Option<u32>,
    pub owners: Owners<'a>,
}

/// Who owns the files in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners<'a> {
    /// Root owns everything, whoever owns the tree on the host (the build's
    /// user assembled it).
    Root,
    /// The tree's owners are right already (root made it, system users'
    /// files included): copy them.
    AsIs,
    /// Root owns everything but these paths (relative to the tree's root),
    /// which get the `(uid, gid)` the tarball the tree came from recorded.
    RootExcept(&'a BTreeMap<PathBuf, (u32, u32)>),
}

/// Makes the filesystem `spec` describes; see the module doc for the steps.
pub fn make(runner: &dyn Runner, spec: &Ext4Spec<'_>) -> Result<(), Ext4Error> {
    let image = spec.image;
    let create_err = |source| Ext4Error::Create {
        path: image.to_path_buf(),
        source,
    };
    File::create(image)
        .and_then(|f| f.set_len(spec.size_bytes.next_multiple_of(BLOCK)))
        .map_err(create_err)?;

    let extended = format!("root_owner=0:0,resize={RESIZE_BLOCKS}");
    let mkfs = Cmd::new("mkfs.ext4")
        .args([
            "-q", "-F", "-T", "default", "-b", "4096", "-L", spec.label, "-E", &extended, "-d",
        ])
        .arg(spec.tree)
        .arg(image);
    runner.run(&mkfs).map_err(|source| Ext4Error::Mkfs {
        path: image.to_path_buf(),
        source,
    })?;

    let mut script = fixup_script(spec.tree, spec.root_mode, spec.owners).map_err(|source| {
        Ext4Error::ReadTree {
            path: spec.tree.to_path_buf(),
            source,
        }
    })?;
    // The kernel's own count of metadata blocks, so that the first mount
    // does not write it into every superblock (`overhead.rs`).
    if let Some(clusters) = crate::overhead::read_superblock(image)
        .ok()
        .and_then(|sb| crate::overhead::overhead_clusters(&sb))
    {
        script.push_str(&crate::overhead::debugfs_command(clusters));
        script.push('\n');
    }
    if script.is_empty() {
        return Ok(());
    }
    let debugfs = Cmd::new("debugfs")
        .args(["-w", "-f", "-"])
        .arg(image)
        .stdin(script);
    let out = runner.run(&debugfs).map_err(|source| Ext4Error::Fixup {
        path: image.to_path_buf(),
        source,
    })?;
    // debugfs exits 0 even when a command fails; its complaints go to stderr
    // after the version banner.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !complaints.is_empty() {
        return Err(Ext4Error::FixupRejected {
            path: image.to_path_buf(),
            detail: complaints.join("\n  "),
        });
    }
    Ok(())
}

/// The `debugfs` commands that give `tree`'s files the owners `owners`
/// says in the image and its root `root_mode`; empty when nothing needs
/// fixing.
fn fixup_script(tree: &Path, root_mode: Option<u32>, owners: Owners<'_>) -> io::Result<String> {
    let mut script = String::new();
    if let Some(mode) = root_mode {
        script.push_str(&format!(
            "sif \"/\" mode 0{:o}\n",
            0o040000 | (mode & 0o7777)
        ));
    }
    if owners == Owners::AsIs {
        return Ok(script);
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = tree.join(&rel);
        let meta = fs::symlink_metadata(&full)?;
        let (uid, gid) = match owners {
            Owners::RootExcept(listed) => listed.get(&rel).copied().unwrap_or((0, 0)),
            _ => (0, 0),
        };
        if !rel.as_os_str().is_empty() && (meta.uid() != uid || meta.gid() != gid) {
            let name = rel.to_string_lossy();
            if name.contains(['"', '\n']) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unsupported file name {name:?}"),
                ));
            }
            script.push_str(&format!(
                "sif \"/{name}\" uid {uid}\nsif \"/{name}\" gid {gid}\n"
            ));
        }
        if meta.is_dir() {
            let mut children: Vec<_> = fs::read_dir(&full)?
                .map(|e| e.map(|e| rel.join(e.file_name())))
                .collect::<Result<_, _>>()?;
            children.sort();
            stack.extend(children.into_iter().rev());
        }
    }
    Ok(script)
}

/// Bytes a tree takes in ext4 with 4 KiB blocks: data rounded up to blocks,
/// a block per directory and per long symlink, an inode each.
pub fn tree_size(tree: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![tree.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path)?;
        total += 256;
        if meta.is_dir() {
            total += BLOCK;
            for entry in fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        } else if meta.file_type().is_symlink() {
            total += if meta.len() > 59 { BLOCK } else { 0 };
        } else {
            total += meta.len().next_multiple_of(BLOCK);
        }
    }
    Ok(total)
}

/// True when `path` holds an ext2/3/4 superblock (magic 0xEF53 at 1080).
pub fn has_ext4_magic(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; MAGIC_OFFSET + 2];
    let mut file = File::open(path)?;
    match file.read_exact(&mut head) {
        Ok(()) => Ok(head[MAGIC_OFFSET..] == MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeRunner;

    #[test]
    fn fixup_script_sets_root_mode_and_owner_of_user_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(".ssh")).unwrap();
        fs::write(dir.path().join(".profile"), "x").unwrap();
        let script = fixup_script(dir.path(), Some(0o700), Owners::Root).unwrap();
        assert!(script.starts_with("sif \"/\" mode 040700\n"), "{script}");
        let owned_by_us = fs::metadata(dir.path()).unwrap().uid() != 0;
        assert_eq!(
            script.contains("sif \"/.ssh\" uid 0\nsif \"/.ssh\" gid 0\n"),
            owned_by_us,
            "{script}"
        );
    }

    #[test]
    fn fixup_script_gives_listed_files_their_recorded_owner() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/shadow"), "x").unwrap();
        let listed = BTreeMap::from([
            (PathBuf::from("etc/shadow"), (0, 42)),
            (PathBuf::from("dev/null"), (0, 0)),
        ]);
        let script = fixup_script(dir.path(), None, Owners::RootExcept(&listed)).unwrap();
        assert!(
            script.contains("sif \"/etc/shadow\" uid 0\nsif \"/etc/shadow\" gid 42\n"),
            "{script}"
        );
        assert!(!script.contains("/dev/null"), "{script}");
        assert_eq!(
            fixup_script(dir.path(), None, Owners::AsIs).unwrap(),
            "",
            "a tree made by root is copied as is"
        );
    }

    #[test]
    fn mkfs_gets_the_shared_options_and_debugfs_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.ext4");
        let runner = FakeRunner::new(|_| Ok(Default::default()));
        let spec = Ext4Spec {
            tree: dir.path(),
            image: &image,
            label: "work",
            size_bytes: 1000,
            root_mode: Some(0o700),
            owners: Owners::Root,
        };
        make(&runner, &spec).unwrap();
        let calls = runner.calls();
        assert!(calls[0].starts_with(
            "mkfs.ext4 -q -F -T default -b 4096 -L work -E root_owner=0:0,resize=268435456 -d "
        ));
        assert!(calls[1].starts_with("debugfs -w -f - "), "{calls:?}");
        assert_eq!(
            fs::metadata(&image).unwrap().len(),
            4096,
            "size is rounded up to a block"
        );
    }

    #[test]
    fn debugfs_complaints_fail_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.ext4");
        let runner = FakeRunner::new(|cmd| {
            let stderr = if cmd.program == "debugfs" {
                b"debugfs 1.47.0\n/x: File not found by ext2_lookup\n".to_vec()
            } else {
                vec![]
            };
            Ok(banger_sys::command::Output {
                stdout: vec![],
                stderr,
            })
        });
        let spec = Ext4Spec {
            tree: dir.path(),
            image: &image,
            label: "l",
            size_bytes: 4096,
            root_mode: Some(0o755),
            owners: Owners::Root,
        };
        let err = make(&runner, &spec).unwrap_err();
        assert!(
            err.to_string().ends_with("File not found by ext2_lookup"),
            "{err}"
        );
    }

    #[test]
    fn ext4_magic_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let mut sb = vec![0u8; 2048];
        sb[1080..1082].copy_from_slice(&[0x53, 0xef]);
        fs::write(dir.path().join("fs"), &sb).unwrap();
        fs::write(dir.path().join("short"), b"tiny").unwrap();
        assert!(has_ext4_magic(&dir.path().join("fs")).unwrap());
        assert!(!has_ext4_magic(&dir.path().join("short")).unwrap());
    }

    #[test]
    fn tree_size_counts_blocks() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![1u8; 5000]).unwrap();
        std::os::unix::fs::symlink("/bin/busybox", dir.path().join("sh")).unwrap();
        assert_eq!(tree_size(dir.path()).unwrap(), 3 * 256 + BLOCK + 2 * BLOCK);
    }
}
