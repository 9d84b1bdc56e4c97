//! Building the `minimal` preset: Debian's cloud kernel, busybox-static and
//! the agent, in the stages of [`MINIMAL_STAGES`](crate::MINIMAL_STAGES):
//!
//! 1. `fetch_packages`: [`crate::packages`] downloads (or reuses) and unpacks
//!    the kernel and busybox packages in the cache.
//! 2. `extract_kernel`: `vmlinux` out of the package's LZ4 bzImage
//!    ([`crate::kernel`]); the virtio modules and their dependencies
//!    ([`crate::modules`]).
//! 3. `initramfs`: `initrd.img` with the agent as `/init` ([`crate::initramfs`]).
//! 4. `rootfs`: `rootfs.ext4` from busybox ([`crate::rootfs`]).
//! 5. `work_seed`: `work-seed.ext4` ([`crate::work_seed`]).
//! 6. `manifest`: fingerprints into `manifest.json`, then the staging
//!    directory is renamed to `out_dir` ([`crate::staging`]).
//!
//! Stages 2, 3, 5 and 6 are the same for every preset made from the cloud
//! kernel package; they are the `pub(crate)` functions here, which the
//! `debian` preset calls too.
//!
//! Blocking code: the daemon runs it on a blocking worker thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_sys::command::Runner;

use crate::initramfs::{self, Agent};
use crate::kernel::{self, PreparedKernel};
use crate::layout;
use crate::manifest::{self, MANIFEST_FORMAT, Manifest, SOURCE_MINIMAL};
use crate::modules::{Module, ModuleTree};
use crate::packages::{self, KernelPackage};
use crate::rootfs;
use crate::stages::{self, BuildEvent, Reporter, human_size};
use crate::staging::Staging;
use crate::work_seed;
use crate::{ImageError, validate_name};

/// What [`build_minimal`] (and [`crate::build_debian`]) need.
#[derive(Clone)]
pub struct BuildParams {
    pub name: String,
    /// Package cache (`debs/`, `extract/`, `debian-archives/`), kept
    /// between builds.
    pub cache_dir: PathBuf,
    /// The static `banger-agent` binary, which becomes the initramfs' `/init`.
    pub agent_bin: PathBuf,
    /// The finished image directory; must not exist yet.
    pub out_dir: PathBuf,
    pub runner: Arc<dyn Runner>,
    /// Take this kernel release (`6.1.0-56-cloud-amd64`) instead of the one
    /// Debian's cloud kernel metapackage names today: rebuilding an image
    /// from its manifest.
    pub kernel_release: Option<String>,
    /// The packages and versions a manifest recorded, when rebuilding from
    /// it: the build reports how what it installed differs.
    pub expect_installed: BTreeMap<String, String>,
}

/// How `installed` differs from what a rebuild expected, as one line; none
/// when nothing was expected.
pub(crate) fn drift_summary(
    p: &BuildParams,
    installed: &BTreeMap<String, String>,
) -> Option<String> {
    (!p.expect_installed.is_empty()).then(|| {
        crate::debian::dpkg::Drift::between(&p.expect_installed, installed).summary(installed.len())
    })
}

/// Builds the `minimal` image into `p.out_dir`; on error nothing is left
/// there (the package cache keeps what was downloaded).
pub fn build_minimal(
    p: &BuildParams,
    report: &mut dyn FnMut(BuildEvent),
) -> Result<Manifest, ImageError> {
    validate_name(&p.name)?;
    let agent = initramfs::read_agent(&p.agent_bin)?;
    let staging = Staging::beside(&p.out_dir)?;
    let dir = staging.path().to_path_buf();
    let runner = p.runner.as_ref();
    let mut r = Reporter::new(&p.name, report);

    let pkgs = r.stage(stages::FETCH_PACKAGES, |progress| {
        let pkgs =
            packages::fetch_minimal(runner, &p.cache_dir, p.kernel_release.as_deref(), progress)?;
        let mut detail = format!(
            "{} {}, busybox {}",
            pkgs.kernel.package.name, pkgs.kernel.package.version, pkgs.busybox.version
        );
        if let Some(summary) = drift_summary(p, &pkgs.installed()) {
            detail = format!("{detail}; {summary}");
        }
        Ok((pkgs, Some(detail)))
    })?;

    let (kernel, modules) = extract_kernel(&mut r, &pkgs.kernel, &dir)?;
    write_initramfs(&mut r, &p.agent_bin, &agent, &modules, &dir)?;

    r.stage(stages::ROOTFS, |_| {
        let image = dir.join(layout::ROOTFS);
        let fs = rootfs::build_minimal(
            runner,
            &pkgs.busybox.dir,
            &pkgs.busybox.version,
            &dir.join(".rootfs-tree"),
            &image,
        )?;
        Ok((
            (),
            Some(format!(
                "{} {}, {} applets",
                layout::ROOTFS,
                human_size(fs.size_bytes),
                fs.applets
            )),
        ))
    })?;

    write_work_seed(&mut r, runner, &dir, &[])?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: p.name.clone(),
        source: SOURCE_MINIMAL.to_string(),
        kernel_version: Some(pkgs.kernel.release.clone()),
        kernel_cmdline: String::new(),
        modules: modules.iter().map(|m| m.file_name.clone()).collect(),
        files: Vec::new(),
        created_at: banger_sys::clock::unix_now(),
        agent_version: manifest::agent_version(&agent.bytes),
        suite: None,
        packages: Vec::new(),
        kernel_package: Some(format!(
            "{}={}",
            pkgs.kernel.package.name, pkgs.kernel.package.version
        )),
        installed: pkgs.installed(),
    };
    finish(&mut r, staging, kernel.file_name, manifest)
}

/// The `extract_kernel` stage: the kernel from the unpacked package into
/// `dir`, and the guest's modules resolved in its module tree.
pub(crate) fn extract_kernel(
    r: &mut Reporter<'_>,
    pkg: &KernelPackage,
    dir: &Path,
) -> Result<(PreparedKernel, Vec<Module>), ImageError> {
    r.stage(stages::EXTRACT_KERNEL, |progress| {
        let vmlinuz = pkg.package.dir.join(format!("boot/vmlinuz-{}", pkg.release));
        let kernel = kernel::prepare(&vmlinuz, dir)?;
        if !kernel.extracted {
            progress("found no LZ4-compressed vmlinux in the bzImage: keeping the bzImage, which boots slower".into());
        }
        let tree = ModuleTree::scan(&pkg.package.dir.join("lib/modules").join(&pkg.release))?;
        let modules = tree.resolve_guest_modules(Some(&pkg.release))?;
        let size = std::fs::metadata(dir.join(kernel.file_name)).map(|m| m.len()).unwrap_or(0);
        let detail = format!("{} {}, {} modules", kernel.file_name, human_size(size), modules.len());
        Ok(((kernel, modules), Some(detail)))
    })
}

/// The `initramfs` stage: `initrd.img` with the agent (read and checked
/// from `agent_bin`) as `/init` and the guest's modules.
pub(crate) fn write_initramfs(
    r: &mut Reporter<'_>,
    agent_bin: &Path,
    agent: &Agent,
    modules: &[Module],
    dir: &Path,
) -> Result<(), ImageError> {
    r.stage(stages::INITRAMFS, |progress| {
        // Which agent went in: an image is only as good as the binary baked into it.
        progress(format!("agent {}", agent_bin.display()));
        let archive = initramfs::agent_archive(agent, modules)?;
        let size = initramfs::write(&dir.join(layout::INITRD), None, &archive)?;
        Ok(((), Some(format!("{} {}", layout::INITRD, human_size(size)))))
    })
}

/// The `work_seed` stage; `extra` files go into the seed beside `.profile`.
pub(crate) fn write_work_seed(
    r: &mut Reporter<'_>,
    runner: &dyn Runner,
    dir: &Path,
    extra: &[(&str, &str)],
) -> Result<(), ImageError> {
    r.stage(stages::WORK_SEED, |_| {
        let size = work_seed::build(
            runner,
            &dir.join(".work-seed-tree"),
            &dir.join(layout::WORK_SEED),
            extra,
        )?;
        Ok((
            (),
            Some(format!("{} {}", layout::WORK_SEED, human_size(size))),
        ))
    })
}

/// The `manifest` stage: fingerprints the image's files into `manifest`
/// (whose `files` are filled in here), saves it and moves the staging
/// directory into place.
pub(crate) fn finish(
    r: &mut Reporter<'_>,
    staging: Staging,
    kernel_file: &str,
    mut manifest: Manifest,
) -> Result<Manifest, ImageError> {
    r.stage(stages::MANIFEST, |_| {
        let dir = staging.path();
        manifest.files = manifest::fingerprint(
            dir,
            &[
                kernel_file,
                layout::INITRD,
                layout::ROOTFS,
                layout::WORK_SEED,
            ],
        )?;
        manifest.save(dir)?;
        let out = staging.commit()?;
        Ok((manifest, Some(format!("{}", out.display()))))
    })
}
