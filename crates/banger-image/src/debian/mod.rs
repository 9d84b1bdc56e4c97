//! Building the `debian` preset: the same kernel, modules and initramfs as
//! `minimal`, with a root filesystem that is a real Debian (`minbase` plus
//! ssh, git, python and friends) installed by mmdebstrap, in the stages of
//! [`DEBIAN_STAGES`](crate::DEBIAN_STAGES):
//!
//! 1. `fetch_packages`: the cloud kernel package, through the host's apt
//!    ([`crate::packages`]).
//! 2. `extract_kernel`, 3. `initramfs`: as for `minimal` ([`crate::build`]).
//! 4. `debootstrap`: mmdebstrap installs the suite with [`BASE_PACKAGES`],
//!    the caller's extras and the kernel's modules ([`bootstrap`]), as root
//!    into a directory, unprivileged into a tarball that is then unpacked
//!    ([`tree::unpack`]); the tree is made fit to be a shared base
//!    ([`tree::prepare`]). In unshare mode the chroot is built outside the
//!    user's (possibly 0700) home and state directory, in a private
//!    directory the namespace's root can reach ([`scratch`]); the tarball,
//!    the tree and the image stay in the staging directory.
//! 5. `rootfs`: `mkfs.ext4 -d` makes `rootfs.ext4` with [`FREE_SPACE`] to
//!    spare, owners from the tarball when there was one.
//! 6. `work_seed`: as for `minimal`, plus a `.bashrc`.
//! 7. `manifest`: as for `minimal`, plus the suite and the package list.
//!
//! Everything that is checked without side effects (names, the suite, an
//! installer to run) is checked before the first stage starts.

mod bootstrap;
mod cache;
pub mod dpkg;
mod scratch;
mod tarball;
mod tree;

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;

use banger_sys::command::CommandError;

use crate::build::{self, BuildParams};
use crate::ext4::{self, Ext4Error, Ext4Spec, Owners};
use crate::initramfs;
use crate::layout;
use crate::manifest::{self, MANIFEST_FORMAT, Manifest, SOURCE_DEBIAN};
use crate::packages;
use crate::stages::{self, BuildEvent, Reporter, human_size};
use crate::staging::Staging;
use crate::{ImageError, validate_name};

use bootstrap::{Host, Installer};
use scratch::ChrootDir;

/// Installed in every `debian` image on top of `minbase`.
pub const BASE_PACKAGES: &[&str] = &[
    "openssh-server",
    "git",
    // `banger vm run -- make test`, the first thing a user types.
    "make",
    "ca-certificates",
    "iproute2",
    "sudo",
    "python3",
    "kmod",
];
pub const DEFAULT_SUITE: &str = "bookworm";
/// Free space left in `rootfs.ext4`: the VM's room on `/` for its own
/// `apt-get install`s (its copy-on-write overlay cannot grow the
/// filesystem). The file is sparse, but it is hashed whole.
pub const FREE_SPACE: u64 = 512 << 20;

const BASHRC: &str = "\
# ~/.bashrc on banger's work disk (mounted at /root).
case $- in *i*) ;; *) return ;; esac
HISTCONTROL=ignoreboth
HISTSIZE=10000
shopt -s histappend checkwinsize
PS1='\\u@\\h:\\w\\$ '
alias ls='ls --color=auto'
alias grep='grep --color=auto'
";

/// What goes into a `debian` image besides [`BASE_PACKAGES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianOptions {
    /// A Debian codename or alias mmdebstrap knows (`bookworm`, `trixie`,
    /// `stable`).
    pub suite: String,
    pub extra_packages: Vec<String>,
}

impl Default for DebianOptions {
    fn default() -> Self {
        DebianOptions {
            suite: DEFAULT_SUITE.to_string(),
            extra_packages: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error(
        "invalid package name {name:?}: Debian package names are two or more lowercase letters, digits, '+', '-' or '.', starting with a letter or digit"
    )]
    InvalidPackage { name: String },
    #[error("invalid Debian suite {suite:?}: give a codename such as bookworm or trixie")]
    InvalidSuite { suite: String },
    #[error("mmdebstrap not found in PATH: install mmdebstrap (apt-get install mmdebstrap){}",
        if *.debootstrap_needs_root { " (debootstrap, which is installed, needs root)" } else { "" })]
    NoMmdebstrap { debootstrap_needs_root: bool },
    #[error(
        "an unprivileged build needs user namespaces ({reason}) or fakeroot and fakechroot: allow user namespaces, install fakeroot and fakechroot, or build as root"
    )]
    NoUnprivilegedMode { reason: String },
    #[error(
        "no temporary directory every user can reach for mmdebstrap's chroot (tried $TMPDIR, {}): the user namespace's root cannot reach the others; set TMPDIR to a directory that it and each directory above it let others search (o+x)",
        scratch::BASES.join(", ")
    )]
    NoReachableTmp,
    #[error("could not make a directory for mmdebstrap's chroot in {base}")]
    ChrootDir {
        base: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{program} could not install Debian {suite}")]
    Install {
        program: &'static str,
        suite: String,
        #[source]
        source: CommandError,
    },
    #[error("could not unpack the installed system {tarball}")]
    Unpack {
        tarball: PathBuf,
        #[source]
        source: CommandError,
    },
    #[error("could not read the owners recorded in {tarball}")]
    ReadTarball {
        tarball: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not prepare the installed tree at {path}")]
    Tree {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not index the kernel modules with depmod")]
    Depmod {
        #[source]
        source: CommandError,
    },
    #[error("could not use the package cache {path}: check that it is writable")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
}

/// How this process would install the `debian` preset's root filesystem
/// (`mmdebstrap --mode=unshare`, …) and what the user should know about
/// the choice, or why it cannot: what `doctor` reports.
pub fn debian_installer() -> Result<(String, Vec<String>), DebianError> {
    let plan = bootstrap::plan(&Host::probe())?;
    Ok((plan.installer.to_string(), plan.notes))
}

/// Builds the `debian` image into `p.out_dir`; on error nothing is left
/// there (the package caches keep what was downloaded).
pub fn build_debian(
    p: &BuildParams,
    opts: &DebianOptions,
    report: &mut dyn FnMut(BuildEvent),
) -> Result<Manifest, ImageError> {
    validate_name(&p.name)?;
    let packages = package_set(opts)?;
    let plan = bootstrap::plan(&Host::probe())?;
    let agent = initramfs::read_agent(&p.agent_bin)?;
    let staging = Staging::beside(&p.out_dir)?;
    let dir = staging.path().to_path_buf();
    let runner = p.runner.as_ref();
    let mut r = Reporter::new(&p.name, report);

    let kernel = r.stage(stages::FETCH_KERNEL, |progress| {
        let kernel =
            packages::fetch_kernel(runner, &p.cache_dir, p.kernel_release.as_deref(), progress)?;
        let detail = format!("{} {}", kernel.package.name, kernel.package.version);
        Ok((kernel, Some(detail)))
    })?;
    let (prepared, modules) = build::extract_kernel(&mut r, &kernel, &dir)?;
    build::write_initramfs(&mut r, &p.agent_bin, &agent, &modules, &dir)?;

    let tree = dir.join(".debian-tree");
    let owners = r.stage(stages::DEBOOTSTRAP, |progress| {
        for note in &plan.notes {
            progress(note.clone());
        }
        let tarball = dir.join(".debian-rootfs.tar");
        let via_tarball = plan.installer.via_tarball();
        let debootstrap = plan.installer == Installer::Debootstrap;
        let module_dir = kernel.package.dir.join("lib/modules").join(&kernel.release);
        let chroot_dir = ChrootDir::new(plan.chroot_base.as_deref(), &dir)?;
        let target = bootstrap::Target {
            suite: &opts.suite,
            packages: &packages,
            output: if via_tarball { &tarball } else { &tree },
            scratch: chroot_dir.path(),
            modules: (!debootstrap).then_some(bootstrap::Modules {
                dir: &module_dir,
                release: &kernel.release,
            }),
        };
        let cached = bootstrap::install(runner, &plan.installer, &target, &p.cache_dir, progress)?;
        drop(chroot_dir);
        let owners = match via_tarball {
            true => Some(tree::unpack(runner, &tarball, &tree)?),
            false => None,
        };
        if debootstrap {
            tree::install_modules(runner, &tree, &kernel)?;
        }
        tree::prepare(&tree, debootstrap)?;
        let tree_err = |source| DebianError::Tree {
            path: tree.clone(),
            source,
        };
        let size = ext4::tree_size(&tree).map_err(tree_err)?;
        let installed = dpkg::installed(&tree).map_err(tree_err)?;
        let mut detail = format!(
            "Debian {} by {}, {} packages, {} tree, {cached} .debs cached for the next build",
            opts.suite,
            plan.installer,
            installed.len(),
            human_size(size),
        );
        if let Some(summary) = build::drift_summary(p, &installed) {
            progress(summary.clone());
            detail = format!("{detail}; {summary}");
        }
        Ok(((owners, installed), Some(detail)))
    })?;
    let (owners, installed) = owners;

    r.stage(stages::ROOTFS, |_| {
        let tree_err = |source| DebianError::Tree {
            path: tree.clone(),
            source,
        };
        let used = ext4::tree_size(&tree).map_err(tree_err)?;
        let module_bytes =
            ext4::tree_size(&tree.join("lib/modules").join(&kernel.release)).unwrap_or(0);
        let size_bytes = (used + FREE_SPACE).next_multiple_of(1 << 20);
        let image = dir.join(layout::ROOTFS);
        let owners = match &owners {
            Some(listed) => Owners::RootExcept(listed),
            None => Owners::AsIs,
        };
        let spec = Ext4Spec {
            tree: &tree,
            image: &image,
            label: "rootfs",
            size_bytes,
            root_mode: None,
            owners,
        };
        ext4::make(runner, &spec).map_err(DebianError::from)?;
        tree::remove_tree(&tree).map_err(tree_err)?;
        let detail = format!(
            "{} {} ({} used, {} of them kernel modules)",
            layout::ROOTFS,
            human_size(size_bytes),
            human_size(used),
            human_size(module_bytes)
        );
        Ok(((), Some(detail)))
    })?;

    build::write_work_seed(&mut r, runner, &dir, &[(".bashrc", BASHRC)])?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: p.name.clone(),
        source: SOURCE_DEBIAN.to_string(),
        kernel_version: Some(kernel.release.clone()),
        kernel_cmdline: String::new(),
        modules: modules.iter().map(|m| m.file_name.clone()).collect(),
        files: Vec::new(),
        created_at: banger_sys::clock::unix_now(),
        agent_version: manifest::agent_version(&agent.bytes),
        suite: Some(opts.suite.clone()),
        packages,
        kernel_package: Some(format!(
            "{}={}",
            kernel.package.name, kernel.package.version
        )),
        installed,
    };
    build::finish(&mut r, staging, prepared.file_name, manifest)
}

/// [`BASE_PACKAGES`] and the extras, validated, sorted and without
/// duplicates; checks the suite too.
pub fn package_set(opts: &DebianOptions) -> Result<Vec<String>, DebianError> {
    if !valid_suite(&opts.suite) {
        return Err(DebianError::InvalidSuite {
            suite: opts.suite.clone(),
        });
    }
    let mut set: BTreeSet<String> = BASE_PACKAGES.iter().map(|p| p.to_string()).collect();
    for name in &opts.extra_packages {
        if !valid_package(name) {
            return Err(DebianError::InvalidPackage { name: name.clone() });
        }
        set.insert(name.clone());
    }
    Ok(set.into_iter().collect())
}

/// Debian policy 5.6.1: `[a-z0-9][a-z0-9+.-]+`.
fn valid_package(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c))
}

/// A suite is a word on mmdebstrap's command line and a cache directory
/// name: lowercase letters, digits, `.` and `-`, not starting with either.
fn valid_suite(suite: &str) -> bool {
    suite.len() <= 64
        && suite
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && suite
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_extras(extras: &[&str]) -> DebianOptions {
        DebianOptions {
            extra_packages: extras.iter().map(|e| e.to_string()).collect(),
            ..DebianOptions::default()
        }
    }

    #[test]
    fn package_set_is_the_base_plus_extras_sorted_once() {
        let set = package_set(&with_extras(&["vim", "git", "libstdc++6", "g++-12"])).unwrap();
        assert_eq!(
            set,
            [
                "ca-certificates",
                "g++-12",
                "git",
                "iproute2",
                "kmod",
                "libstdc++6",
                "make",
                "openssh-server",
                "python3",
                "sudo",
                "vim"
            ]
        );
    }

    #[test]
    fn bad_package_names_are_named_in_the_error() {
        for bad in [
            "Vim",
            "x",
            "-rf",
            "git,curl",
            "foo bar",
            "",
            "+x",
            "pkg_name",
            "vim=2:9.0",
        ] {
            let err = package_set(&with_extras(&["curl", bad])).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!(
                    "invalid package name {bad:?}: Debian package names"
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn suite_must_be_a_plain_word() {
        assert!(package_set(&DebianOptions::default()).is_ok());
        for bad in ["", "--mode=root", "Bookworm", "bookworm main", "../x"] {
            let opts = DebianOptions {
                suite: bad.into(),
                ..DebianOptions::default()
            };
            assert!(
                matches!(package_set(&opts), Err(DebianError::InvalidSuite { .. })),
                "{bad:?}"
            );
        }
    }
}
