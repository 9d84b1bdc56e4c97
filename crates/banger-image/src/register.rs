//! Registering a user's kernel and root filesystem as an image, in the
//! stages of [`REGISTER_STAGES`](crate::REGISTER_STAGES):
//!
//! 1. `validate`: every input exists and is what it claims: the kernel an
//!    ELF or an x86 bzImage, the rootfs ext4, the initrd a cpio or a
//!    compressed stream the kernel can unpack, the agent a static ELF.
//!    Nothing is copied before all of them pass.
//! 2. `kernel`: `vmlinux` (an ELF as is, or extracted from an LZ4 bzImage)
//!    or `bzImage` ([`crate::kernel`]).
//! 3. `initramfs`: the user's initrd, if any, then our archive with the
//!    agent and the virtio modules taken from the given module tree.
//! 4. `rootfs`: a sparse copy of the rootfs.
//! 5. `work_seed`, 6. `manifest`: as for the `minimal` preset.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_sys::command::Runner;

use crate::ext4;
use crate::initramfs;
use crate::kernel::{self, KernelError};
use crate::layout;
use crate::manifest::{self, MANIFEST_FORMAT, Manifest, SOURCE_REGISTERED};
use crate::modules::ModuleTree;
use crate::stages::{self, BuildEvent, Reporter, human_size};
use crate::staging::Staging;
use crate::work_seed;
use crate::{ImageError, validate_name};

/// What [`register`] needs; all paths are on the host.
#[derive(Clone)]
pub struct RegisterParams {
    pub name: String,
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub initrd: Option<PathBuf>,
    /// A `/lib/modules/<version>` tree to take the virtio modules from.
    pub modules: Option<PathBuf>,
    pub agent_bin: PathBuf,
    /// The finished image directory; must not exist yet.
    pub out_dir: PathBuf,
    pub runner: Arc<dyn Runner>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("could not read {what} {path}: pass an existing, readable file")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "rootfs {path} is not an ext4 filesystem (no superblock magic at byte 1080): pass a raw ext4 image"
    )]
    NotExt4 { path: PathBuf },
    #[error(
        "rootfs {path} is a qcow2 image: convert it first with qemu-img convert -O raw {path} rootfs.ext4"
    )]
    Qcow2Rootfs { path: PathBuf },
    #[error(
        "initrd {path} is neither a cpio archive nor gzip, zstd, lz4, xz, bzip2, lzma or lzo compressed: \
         pass the initramfs the kernel boots with"
    )]
    NotAnInitrd { path: PathBuf },
    #[error("could not copy rootfs {from} to {to}")]
    CopyRootfs {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Registers the user's files as an image in `p.out_dir`; on error nothing
/// is left there.
pub fn register(
    p: &RegisterParams,
    report: &mut dyn FnMut(BuildEvent),
) -> Result<Manifest, ImageError> {
    validate_name(&p.name)?;
    let staging = Staging::beside(&p.out_dir)?;
    let dir = staging.path().to_path_buf();
    let runner = p.runner.as_ref();
    let mut r = Reporter::new(&p.name, report);

    let (agent, module_tree) = r.stage(stages::VALIDATE, |progress| {
        check_kernel(&p.kernel)?;
        check_rootfs(&p.rootfs)?;
        if let Some(initrd) = &p.initrd {
            let format = initrd_format(initrd)?;
            progress(format!("initrd is {format}"));
        }
        let tree = p.modules.as_deref().map(ModuleTree::scan).transpose()?;
        let agent = initramfs::read_agent(&p.agent_bin)?;
        Ok(((agent, tree), None))
    })?;

    let kernel = r.stage(stages::KERNEL, |_| {
        let k = kernel::prepare(&p.kernel, &dir)?;
        let how = if k.extracted {
            " (extracted from the bzImage)"
        } else {
            ""
        };
        let version = k.version.as_deref().unwrap_or("unknown version");
        Ok((k.clone(), Some(format!("{}{how}, {version}", k.file_name))))
    })?;

    let modules = r.stage(stages::INITRAMFS, |progress| {
        let modules = match &module_tree {
            Some(tree) => tree.resolve_guest_modules(kernel.version.as_deref())?,
            None => {
                progress(format!(
                    "no module tree given: the kernel must have {} built in to see its disks",
                    crate::modules::REQUIRED.join(", ")
                ));
                Vec::new()
            }
        };
        let archive = initramfs::agent_archive(&agent, &modules)?;
        let size = initramfs::write(&dir.join(layout::INITRD), p.initrd.as_deref(), &archive)?;
        let detail = format!(
            "{} {}, {} modules",
            layout::INITRD,
            human_size(size),
            modules.len()
        );
        Ok((modules, Some(detail)))
    })?;

    r.stage(stages::COPY_ROOTFS, |_| {
        let dest = dir.join(layout::ROOTFS);
        let size = sparse_copy(&p.rootfs, &dest).map_err(|source| RegisterError::CopyRootfs {
            from: p.rootfs.clone(),
            to: dest.clone(),
            source,
        })?;
        Ok(((), Some(format!("{} {}", layout::ROOTFS, human_size(size)))))
    })?;

    r.stage(stages::WORK_SEED, |_| {
        let size = work_seed::build(
            runner,
            &dir.join(".work-seed-tree"),
            &dir.join(layout::WORK_SEED),
            &[],
        )?;
        Ok((
            (),
            Some(format!("{} {}", layout::WORK_SEED, human_size(size))),
        ))
    })?;

    r.stage(stages::MANIFEST, |_| {
        let files = manifest::fingerprint(
            &dir,
            &[
                kernel.file_name,
                layout::INITRD,
                layout::ROOTFS,
                layout::WORK_SEED,
            ],
        )?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: p.name.clone(),
            source: SOURCE_REGISTERED.to_string(),
            kernel_version: kernel.version.clone(),
            kernel_cmdline: String::new(),
            modules: modules.iter().map(|m| m.file_name.clone()).collect(),
            files,
            created_at: banger_sys::clock::unix_now(),
            agent_version: manifest::agent_version(&agent.bytes),
            suite: None,
            packages: Vec::new(),
            kernel_package: None,
            installed: Default::default(),
        };
        manifest.save(&dir)?;
        let out = staging.commit()?;
        Ok((manifest, Some(format!("{}", out.display()))))
    })
}

fn read_head(what: &'static str, path: &Path, len: usize) -> Result<Vec<u8>, RegisterError> {
    let open_err = |source| RegisterError::Open {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    if file.metadata().map_err(open_err)?.is_dir() {
        return Err(open_err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory",
        )));
    }
    let mut head = Vec::with_capacity(len);
    file.take(len as u64)
        .read_to_end(&mut head)
        .map_err(open_err)?;
    Ok(head)
}

/// Header checks only; [`kernel::prepare`] does the rest.
fn check_kernel(path: &Path) -> Result<(), ImageError> {
    let head = read_head("kernel", path, 4096)?;
    kernel::detect(&head).ok_or_else(|| KernelError::NotAKernel {
        path: path.to_path_buf(),
    })?;
    Ok(())
}

fn check_rootfs(path: &Path) -> Result<(), RegisterError> {
    let head = read_head("rootfs", path, 4)?;
    if head.starts_with(b"QFI\xfb") {
        return Err(RegisterError::Qcow2Rootfs {
            path: path.to_path_buf(),
        });
    }
    let open_err = |source| RegisterError::Open {
        what: "rootfs",
        path: path.to_path_buf(),
        source,
    };
    if !ext4::has_ext4_magic(path).map_err(open_err)? {
        return Err(RegisterError::NotExt4 {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Names the initrd's format from its magic bytes.
fn initrd_format(path: &Path) -> Result<&'static str, RegisterError> {
    let head = read_head("initrd", path, 6)?;
    const FORMATS: &[(&[u8], &str)] = &[
        (b"070701", "a newc cpio archive"),
        (b"070702", "a newc cpio archive"),
        (b"\x1f\x8b", "gzip-compressed"),
        (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
        (b"\x02\x21\x4c\x18", "lz4-compressed"),
        (b"\xfd7zXZ\x00", "xz-compressed"),
        (b"BZh", "bzip2-compressed"),
        (b"\x5d\x00\x00", "lzma-compressed"),
        (b"\x89LZO", "lzo-compressed"),
    ];
    FORMATS
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, name)| *name)
        .ok_or_else(|| RegisterError::NotAnInitrd {
            path: path.to_path_buf(),
        })
}

/// Copies `from` to `to`, leaving holes where `from` has runs of zeros.
/// Returns the size copied.
fn sparse_copy(from: &Path, to: &Path) -> io::Result<u64> {
    const CHUNK: usize = 64 * 1024;
    let mut src = File::open(from)?;
    let mut dst = File::create(to)?;
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            let n = src.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().all(|&b| b == 0) {
            dst.seek(SeekFrom::Current(filled as i64))?;
        } else {
            dst.write_all(&buf[..filled])?;
        }
        size += filled as u64;
    }
    dst.set_len(size)?;
    dst.sync_all()?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeRunner;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn params(dir: &Path, kernel: &[u8], rootfs: &[u8]) -> RegisterParams {
        fs::write(dir.join("kernel"), kernel).unwrap();
        fs::write(dir.join("rootfs"), rootfs).unwrap();
        fs::write(dir.join("agent"), crate::elf::testing::build(&[], &[])).unwrap();
        RegisterParams {
            name: "custom".into(),
            kernel: dir.join("kernel"),
            rootfs: dir.join("rootfs"),
            initrd: None,
            modules: None,
            agent_bin: dir.join("agent"),
            out_dir: dir.join("images/custom"),
            runner: Arc::new(FakeRunner::new(|c| panic!("nothing should run, got {c}"))),
        }
    }

    fn ext4_blob() -> Vec<u8> {
        let mut sb = vec![0u8; 8192];
        sb[1080..1082].copy_from_slice(&[0x53, 0xef]);
        sb
    }

    #[test]
    fn non_kernel_is_rejected_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = params(dir.path(), b"#!/bin/sh\necho not a kernel\n", &ext4_blob());
        let err = register(&p, &mut |_| {}).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} is neither an ELF vmlinux nor an x86 bzImage: pass the kernel image (vmlinux or vmlinuz)",
                p.kernel.display()
            )
        );
        assert!(!dir.path().join("images/custom").exists());
        assert_eq!(
            fs::read_dir(dir.path().join("images")).unwrap().count(),
            0,
            "staging directory removed"
        );
    }

    #[test]
    fn non_ext4_rootfs_is_rejected_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = params(
            dir.path(),
            &crate::elf::testing::pvh_kernel(),
            &vec![0u8; 4096],
        );
        let err = register(&p, &mut |_| {}).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "rootfs {} is not an ext4 filesystem (no superblock magic at byte 1080): pass a raw ext4 image",
                p.rootfs.display()
            )
        );
    }

    #[test]
    fn qcow2_rootfs_gets_a_conversion_hint() {
        let dir = tempfile::tempdir().unwrap();
        let p = params(
            dir.path(),
            &crate::elf::testing::pvh_kernel(),
            b"QFI\xfb\0\0\0\x03",
        );
        let err = register(&p, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("qemu-img convert -O raw"), "{err}");
    }

    #[test]
    fn missing_and_foreign_initrds_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = params(dir.path(), &crate::elf::testing::pvh_kernel(), &ext4_blob());
        p.initrd = Some(dir.path().join("nope.img"));
        let err = register(&p, &mut |_| {}).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "could not read initrd {}",
                dir.path().join("nope.img").display()
            )),
            "{err}"
        );
        fs::write(dir.path().join("text.img"), b"hello").unwrap();
        p.initrd = Some(dir.path().join("text.img"));
        let err = register(&p, &mut |_| {}).unwrap_err();
        assert!(
            err.to_string()
                .contains("is neither a cpio archive nor gzip"),
            "{err}"
        );
    }

    #[test]
    fn registered_image_has_every_file_and_stage() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = params(dir.path(), &crate::elf::testing::pvh_kernel(), &ext4_blob());
        fs::write(dir.path().join("initrd.gz"), b"\x1f\x8b\x08gz").unwrap();
        p.initrd = Some(dir.path().join("initrd.gz"));
        crate::modules::tests::fake_tree(&dir.path().join("modules"), "6.1.0-99-cloud-amd64");
        p.modules = Some(dir.path().join("modules"));
        p.runner = Arc::new(FakeRunner::new(|_| Ok(Default::default())));
        let mut events = Vec::new();
        let manifest = register(&p, &mut |e| events.push(e)).unwrap();

        let started: Vec<&str> = events
            .iter()
            .filter_map(|e| {
                if let BuildEvent::StageStarted { name, .. } = e {
                    Some(*name)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            started,
            stages::REGISTER_STAGES
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
        );
        assert_eq!(manifest.source, "registered");
        assert_eq!(manifest.kernel_file(), Some("vmlinux"));
        assert_eq!(
            manifest.modules.first().map(String::as_str),
            Some("virtio_ring.ko")
        );
        assert_eq!(Manifest::load(&p.out_dir).unwrap(), manifest);
        assert!(crate::verify(&p.out_dir).unwrap().iter().all(|c| c.is_ok()));
        let initrd = fs::read(p.out_dir.join("initrd.img")).unwrap();
        assert!(
            initrd.starts_with(b"\x1f\x8b\x08gz\0\0\0\x30\x37\x30\x37\x30\x31"),
            "user initrd, padding, then our cpio"
        );
        assert_eq!(
            fs::read(p.out_dir.join("rootfs.ext4")).unwrap(),
            ext4_blob()
        );
    }

    #[test]
    fn initrd_formats_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (magic, want) in [
            (&b"070701abc"[..], "a newc cpio archive"),
            (b"\x1f\x8b\x08\x00", "gzip-compressed"),
            (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
        ] {
            let path = dir.path().join("i");
            fs::write(&path, magic).unwrap();
            assert_eq!(initrd_format(&path).unwrap(), want);
        }
    }

    #[test]
    fn sparse_copy_keeps_content_and_punches_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 4 << 20];
        data[100] = 1;
        data[(3 << 20) + 5] = 2;
        data.extend_from_slice(b"tail");
        fs::write(dir.path().join("src"), &data).unwrap();
        let size = sparse_copy(&dir.path().join("src"), &dir.path().join("dst")).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(fs::read(dir.path().join("dst")).unwrap(), data);
        let allocated = fs::metadata(dir.path().join("dst")).unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "copy allocated {allocated} bytes");
    }
}
