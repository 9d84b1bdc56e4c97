//! Guest images: building the `minimal` preset from Debian's packages
//! ([`build_minimal`]) and the `debian` preset with mmdebstrap
//! ([`build_debian`]), registering a user's kernel and root filesystem
//! ([`register`]), and checking an image is intact ([`verify`]). Images are
//! made without mounting anything: kernel and modules come out of the
//! distro's kernel package, filesystems from `mkfs.ext4 -d`, the initramfs
//! from our cpio writer. Only `debian` may use privileges, and only
//! mmdebstrap's own (root, or a user namespace).
//!
//! Owns the image directory's contents ([`layout`]) and the package caches
//! under the cache directory it is given. Does not own where images live,
//! their records in the daemon's store, per-VM disks, or booting.
//!
//! Everything here blocks; the daemon runs it on a blocking worker thread
//! and relays [`BuildEvent`]s as operation stages. External programs run
//! through [`banger_sys::command::Runner`], so tests drive the logic with a
//! fake.
//!
//! | module | owns |
//! |---|---|
//! | [`build`](crate::build_minimal) | the `minimal` preset's stages, and those all presets share |
//! | [`debian`](crate::build_debian) | the `debian` preset: mmdebstrap, the installed tree |
//! | [`register`](crate::register()) | validating and importing user files |
//! | `packages` | apt/dpkg and the package cache |
//! | `kernel`, `elf` | kernel formats, vmlinux extraction |
//! | `modules` | module selection and load order |
//! | `initramfs`, [`cpio`] | `initrd.img` |
//! | `rootfs`, `work_seed`, `ext4` | the filesystems |
//! | `manifest` | `manifest.json`, fingerprints, verification |
//! | `staging` | all-or-nothing image directories |

#![forbid(unsafe_code)]

mod build;
pub mod cpio;
mod debian;
mod elf;
mod ext4;
mod initramfs;
mod kernel;
pub mod layout;
mod manifest;
mod modules;
pub mod overhead;
mod packages;
mod register;
mod rootfs;
mod stages;
mod staging;
mod work_seed;

#[cfg(test)]
mod testing;

use std::path::Path;

pub use build::{BuildParams, build_minimal};
pub use debian::{
    BASE_PACKAGES as DEBIAN_BASE_PACKAGES, DebianError, DebianOptions, build_debian,
    debian_installer, package_set as debian_package_set,
};
pub use ext4::Ext4Error;
pub use initramfs::{InitramfsError, check_agent};
pub use kernel::KernelError;
pub use manifest::{
    FileCheck, FileStatus, MANIFEST_FORMAT, Manifest, ManifestError, Recipe, SOURCE_DEBIAN,
    SOURCE_MINIMAL, SOURCE_REGISTERED,
};
pub use modules::{ModuleError, OPTIONAL as OPTIONAL_MODULES, REQUIRED as REQUIRED_MODULES};
pub use packages::PackageError;
pub use register::{RegisterError, RegisterParams, register};
pub use rootfs::RootfsError;
pub use stages::{BuildEvent, DEBIAN_STAGES, MINIMAL_STAGES, REGISTER_STAGES, Stage};
pub use staging::StagingError;
pub use work_seed::WorkSeedError;

/// Every way an image operation fails. Each variant's message names the
/// file or program at fault and, where it can, what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{reason}")]
    InvalidName { name: String, reason: String },
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error(transparent)]
    Packages(#[from] PackageError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Modules(#[from] ModuleError),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    WorkSeed(#[from] WorkSeedError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error(transparent)]
    Debian(#[from] DebianError),
}

/// Re-hashes every file `dir`'s manifest lists (for `banger doctor`).
pub fn verify(dir: &Path) -> Result<Vec<FileCheck>, ImageError> {
    Ok(manifest::verify(dir)?)
}

fn validate_name(name: &str) -> Result<(), ImageError> {
    banger_api::validate_image_name(name).map_err(|reason| ImageError::InvalidName {
        name: name.to_string(),
        reason,
    })
}
