//! Debian packages the presets take files from (the cloud kernel, and
//! busybox for `minimal`), fetched with the host's apt and unpacked with
//! `dpkg-deb`, never installed. Owns the package cache
//! (`<cache_dir>/debs`, `<cache_dir>/extract`); not what is taken out of the
//! packages.
//!
//! 1. `apt-cache show --no-all-versions linux-image-cloud-amd64`: the
//!    metapackage's candidate depends on the real kernel package,
//!    `linux-image-<release>`; the release names the kernel.
//! 2. The same `apt-cache show` gives each package's (the kernel's,
//!    `busybox-static`'s) candidate version and pool file name.
//! 3. Unless `debs/<pool file name>` is cached, `apt-get download
//!    <pkg>=<version>` into a fresh directory under `debs/` and move the
//!    `.deb` into place (apt names files its own way; the pool name is
//!    stable). Run as root, apt warns that it downloads unsandboxed: harmless.
//! 4. Unless `extract/<pkg>_<version>/` exists, `dpkg-deb -x` into a fresh
//!    directory beside it and rename it into place. An unpacked package
//!    needs no `.deb`: step 3 is skipped for it, so `debs/` may be pruned.
//!
//! Moving finished files into place by rename keeps the cache valid when a
//! build dies half way.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use banger_sys::command::{Cmd, CommandError, Runner};

pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error(
        "apt knows no package {package}: run apt-get update (Debian's main archive must be in the apt sources)"
    )]
    UnknownPackage { package: String },
    #[error(
        "the kernel {release} is not offered by the host's apt sources any more (Debian's archive keeps only current kernels): build without pinning it to take today's kernel"
    )]
    KernelGone { release: String },
    #[error("could not look up {package} with apt-cache")]
    Lookup {
        package: String,
        #[source]
        source: CommandError,
    },
    #[error("apt-cache show {package} printed no {field} field: is this a Debian package archive?")]
    Metadata {
        package: String,
        field: &'static str,
    },
    #[error(
        "{package} depends on no linux-image-* package (Depends: {depends}): is this Debian's package?"
    )]
    NoKernelDependency { package: String, depends: String },
    #[error("could not download {package} {version} with apt-get")]
    Download {
        package: String,
        version: String,
        #[source]
        source: CommandError,
    },
    #[error("apt-get download {package} left no .deb file in {dir}")]
    NothingDownloaded { package: String, dir: PathBuf },
    #[error("could not unpack {deb} with dpkg-deb")]
    Unpack {
        deb: PathBuf,
        #[source]
        source: CommandError,
    },
    #[error("could not use the package cache {path}: check that it is writable")]
    Cache {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A package version unpacked in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// Where its `.deb` is cached (it may have been pruned once unpacked).
    pub deb: PathBuf,
    /// Root of the unpacked package.
    pub dir: PathBuf,
}

/// Debian's cloud kernel, unpacked in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    pub package: Package,
    /// `6.1.0-56-cloud-amd64`: the kernel's release (`uname -r`).
    pub release: String,
}

/// The packages the `minimal` preset is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinimalPackages {
    pub kernel: KernelPackage,
    pub busybox: Package,
}

impl MinimalPackages {
    /// What the root filesystem is made of, as a manifest records it.
    pub fn installed(&self) -> std::collections::BTreeMap<String, String> {
        [(self.busybox.name.clone(), self.busybox.version.clone())].into()
    }
}

/// The fields of one `apt-cache show` stanza that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Candidate {
    package: String,
    version: String,
    filename: String,
    depends: String,
}

/// Resolves, downloads (or reuses) and unpacks the kernel and busybox.
pub fn fetch_minimal(
    runner: &dyn Runner,
    cache_dir: &Path,
    release: Option<&str>,
    progress: &mut dyn FnMut(String),
) -> Result<MinimalPackages, PackageError> {
    // apt-cache reloads every package list on each run (~0.6 s here), so
    // ask for as much as possible at once.
    let (kernel, busybox) = match release {
        None => {
            let [meta, busybox] = show(runner, [KERNEL_METAPACKAGE, BUSYBOX_PACKAGE])?;
            (kernel_of(runner, &meta)?, busybox)
        }
        Some(release) => {
            let [busybox] = show(runner, [BUSYBOX_PACKAGE])?;
            (pinned_kernel(runner, release)?, busybox)
        }
    };
    let kernel = fetch_kernel_candidate(runner, cache_dir, kernel, progress)?;
    let busybox = fetch(runner, cache_dir, &busybox, progress)?;
    Ok(MinimalPackages { kernel, busybox })
}

/// Resolves, downloads (or reuses) and unpacks the cloud kernel alone: the
/// one of `release` (`6.1.0-56-cloud-amd64`, to rebuild an image as it
/// was), else the one the metapackage depends on today.
pub fn fetch_kernel(
    runner: &dyn Runner,
    cache_dir: &Path,
    release: Option<&str>,
    progress: &mut dyn FnMut(String),
) -> Result<KernelPackage, PackageError> {
    let kernel = match release {
        Some(release) => pinned_kernel(runner, release)?,
        None => {
            let [meta] = show(runner, [KERNEL_METAPACKAGE])?;
            kernel_of(runner, &meta)?
        }
    };
    fetch_kernel_candidate(runner, cache_dir, kernel, progress)
}

/// The candidate of the kernel package the metapackage `meta` depends on.
fn kernel_of(runner: &dyn Runner, meta: &Candidate) -> Result<Candidate, PackageError> {
    let kernel_name =
        kernel_dependency(&meta.depends).ok_or_else(|| PackageError::NoKernelDependency {
            package: KERNEL_METAPACKAGE.to_string(),
            depends: meta.depends.clone(),
        })?;
    let [kernel] = show(runner, [kernel_name.as_str()])?;
    Ok(kernel)
}

/// The candidate of `linux-image-<release>`.
fn pinned_kernel(runner: &dyn Runner, release: &str) -> Result<Candidate, PackageError> {
    let name = format!("linux-image-{release}");
    match show(runner, [name.as_str()]) {
        Ok([kernel]) => Ok(kernel),
        Err(PackageError::UnknownPackage { .. }) => Err(PackageError::KernelGone {
            release: release.to_string(),
        }),
        Err(e) => Err(e),
    }
}

fn fetch_kernel_candidate(
    runner: &dyn Runner,
    cache_dir: &Path,
    kernel: Candidate,
    progress: &mut dyn FnMut(String),
) -> Result<KernelPackage, PackageError> {
    let release = kernel
        .package
        .trim_start_matches("linux-image-")
        .to_string();
    let package = fetch(runner, cache_dir, &kernel, progress)?;
    Ok(KernelPackage { package, release })
}

/// Downloads (unless cached) and unpacks (unless unpacked) a candidate.
fn fetch(
    runner: &dyn Runner,
    cache_dir: &Path,
    cand: &Candidate,
    progress: &mut dyn FnMut(String),
) -> Result<Package, PackageError> {
    let name = cand.package.as_str();
    let debs = cache_dir.join("debs");
    let extract = cache_dir.join("extract");
    for dir in [&debs, &extract] {
        fs::create_dir_all(dir).map_err(|source| PackageError::Cache {
            path: dir.clone(),
            source,
        })?;
    }
    let pool_name = Path::new(&cand.filename)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let deb = debs.join(&pool_name);
    let dir = extract.join(format!("{name}_{}", cand.version.replace(':', "%3a")));
    if dir.is_dir() {
        progress(format!("using cached {name} {}", cand.version));
    } else {
        if deb.is_file() {
            progress(format!("using downloaded {pool_name}"));
        } else {
            progress(format!("downloading {name} {}", cand.version));
            download(runner, &debs, name, &cand.version, &deb)?;
        }
        progress(format!("unpacking {pool_name}"));
        let cache_err = |source| PackageError::Cache {
            path: extract.clone(),
            source,
        };
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&extract)
            .map_err(cache_err)?;
        let cmd = Cmd::new("dpkg-deb").arg("-x").arg(&deb).arg(tmp.path());
        runner.run(&cmd).map_err(|source| PackageError::Unpack {
            deb: deb.clone(),
            source,
        })?;
        match fs::rename(tmp.path(), &dir) {
            // The directory now lives on under its final name.
            Ok(()) => {
                let _ = tmp.keep();
            }
            // A concurrent build unpacked the same package first: its copy is
            // as good as ours, which the temp dir's drop removes.
            Err(_) if dir.is_dir() => {}
            Err(e) => return Err(cache_err(e)),
        }
    }
    Ok(Package {
        name: name.to_string(),
        version: cand.version.clone(),
        deb,
        dir,
    })
}

fn download(
    runner: &dyn Runner,
    debs: &Path,
    name: &str,
    version: &str,
    dest: &Path,
) -> Result<(), PackageError> {
    let cache_err = |source| PackageError::Cache {
        path: debs.to_path_buf(),
        source,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(debs)
        .map_err(cache_err)?;
    let cmd = apt("apt-get")
        .args(["download", &format!("{name}={version}")])
        .cwd(tmp.path());
    runner
        .run(&cmd)
        .map_err(|source| match unknown_package(&source) {
            true => PackageError::UnknownPackage {
                package: name.to_string(),
            },
            false => PackageError::Download {
                package: name.to_string(),
                version: version.to_string(),
                source,
            },
        })?;
    let fetched = fs::read_dir(tmp.path())
        .map_err(cache_err)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| PackageError::NothingDownloaded {
            package: name.to_string(),
            dir: tmp.path().to_path_buf(),
        })?;
    fs::rename(&fetched, dest).map_err(cache_err)
}

/// `apt-cache show --no-all-versions <names>`: each candidate's stanza,
/// in the order asked.
fn show<const N: usize>(
    runner: &dyn Runner,
    names: [&str; N],
) -> Result<[Candidate; N], PackageError> {
    let cmd = apt("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(names);
    let out = runner
        .run(&cmd)
        .map_err(|source| match unknown_package(&source) {
            // apt-cache fails only when it finds none of them.
            true => PackageError::UnknownPackage {
                package: names[0].to_string(),
            },
            false => PackageError::Lookup {
                package: names.join(", "),
                source,
            },
        })?;
    let stanzas = parse_stanzas(&out.stdout_lossy());
    let mut found = Vec::with_capacity(N);
    for name in names {
        let cand = stanzas.iter().find(|c| c.package == name).ok_or_else(|| {
            PackageError::UnknownPackage {
                package: name.to_string(),
            }
        })?;
        let missing = |field| PackageError::Metadata {
            package: name.to_string(),
            field,
        };
        if cand.version.is_empty() {
            return Err(missing("Version"));
        }
        if cand.filename.is_empty() {
            return Err(missing("Filename"));
        }
        found.push(cand.clone());
    }
    Ok(found.try_into().expect("one candidate per name"))
}

fn apt(program: &str) -> Cmd {
    // Stable English messages, which unknown_package() matches.
    Cmd::new(program)
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive")
}

fn unknown_package(err: &CommandError) -> bool {
    matches!(err, CommandError::Failed { stderr_tail, .. }
        if ["No packages found", "Unable to locate package", "Can't select candidate version"]
            .iter()
            .any(|m| stderr_tail.contains(m)))
}

/// Each stanza's Package, Version, Filename and Depends (continuation
/// lines folded into their field).
fn parse_stanzas(text: &str) -> Vec<Candidate> {
    let mut stanzas = vec![Candidate::default()];
    let mut current = "";
    for line in text.lines() {
        if line.trim().is_empty() {
            if stanzas.last().is_some_and(|c| !c.package.is_empty()) {
                stanzas.push(Candidate::default());
            }
            current = "";
            continue;
        }
        let value = if line.starts_with([' ', '\t']) {
            line.trim()
        } else {
            let (key, value) = line.split_once(':').unwrap_or((line, ""));
            current = key;
            value.trim()
        };
        let cand = stanzas.last_mut().expect("never empty");
        let field = match current {
            "Package" => &mut cand.package,
            "Version" => &mut cand.version,
            "Filename" => &mut cand.filename,
            "Depends" => &mut cand.depends,
            _ => continue,
        };
        if !field.is_empty() && !value.is_empty() {
            field.push(' ');
        }
        field.push_str(value);
    }
    stanzas.retain(|c| !c.package.is_empty());
    stanzas
}

/// `linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)` → the package name.
fn kernel_dependency(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|name| name.starts_with("linux-image-") && name.len() > "linux-image-".len())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeRunner, stdout};

    const META: &str = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nFilename: pool/main/l/linux-signed-amd64/linux-image-cloud-amd64_6.1.192-2_amd64.deb\n\n";
    const KERNEL: &str = "Package: linux-image-6.1.0-56-cloud-amd64\nVersion: 6.1.192-2\nDepends: kmod,\n linux-base (>= 4.3~),\n initramfs-tools\nFilename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb\n";
    const BUSYBOX: &str = "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nFilename: pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_amd64.deb\n";

    /// Answers apt-cache from the stanzas above, "downloads" by writing a
    /// file named the way apt does, and "unpacks" by creating a marker.
    fn fake_apt() -> FakeRunner {
        FakeRunner::new(|cmd| {
            let args = cmd.args_lossy();
            match (cmd.program.as_str(), args.first().map(String::as_str)) {
                ("apt-cache", Some("show")) => {
                    let stanzas: Vec<&str> = args[2..]
                        .iter()
                        .map(|name| match name.as_str() {
                            "linux-image-cloud-amd64" => META,
                            "busybox-static" => BUSYBOX,
                            _ => KERNEL,
                        })
                        .collect();
                    Ok(stdout(&stanzas.join("\n")))
                }
                ("apt-get", Some("download")) => {
                    let (name, version) = args[1].split_once('=').unwrap();
                    let file = format!("{name}_{}_amd64.deb", version.replace(':', "%3a"));
                    fs::write(cmd.cwd.as_ref().unwrap().join(file), b"deb").unwrap();
                    Ok(stdout(""))
                }
                ("dpkg-deb", Some("-x")) => {
                    fs::write(Path::new(&args[2]).join("unpacked"), b"").unwrap();
                    Ok(stdout(""))
                }
                _ => panic!("unexpected command {cmd}"),
            }
        })
    }

    /// apt-cache with empty package lists.
    fn apt_knows_nothing() -> FakeRunner {
        FakeRunner::new(|cmd| {
            Err(CommandError::Failed {
                program: cmd.program.clone(),
                code: Some(100),
                signal: None,
                stderr_tail: "E: No packages found".into(),
            })
        })
    }

    #[test]
    fn kernel_package_and_release_come_from_the_metapackage() {
        let cache = tempfile::tempdir().unwrap();
        let runner = fake_apt();
        let pkgs = fetch_minimal(&runner, cache.path(), None, &mut |_| {}).unwrap();
        assert_eq!(pkgs.kernel.release, "6.1.0-56-cloud-amd64");
        assert_eq!(pkgs.kernel.package.name, "linux-image-6.1.0-56-cloud-amd64");
        assert_eq!(
            pkgs.kernel.package.deb,
            cache
                .path()
                .join("debs/linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb")
        );
        assert_eq!(
            pkgs.busybox.dir,
            cache
                .path()
                .join("extract/busybox-static_1%3a1.35.0-4+deb12u1+b1")
        );
        assert!(
            pkgs.busybox
                .deb
                .ends_with("debs/busybox-static_1.35.0-4+deb12u1+b1_amd64.deb")
        );
        assert!(pkgs.busybox.dir.join("unpacked").exists());
        assert!(
            runner
                .calls()
                .contains(&"apt-get download busybox-static=1:1.35.0-4+deb12u1+b1".to_string())
        );
    }

    #[test]
    fn second_fetch_reuses_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        fetch_minimal(&fake_apt(), cache.path(), None, &mut |_| {}).unwrap();
        let runner = fake_apt();
        let mut messages = Vec::new();
        fetch_minimal(&runner, cache.path(), None, &mut |m| messages.push(m)).unwrap();
        assert!(
            runner
                .calls()
                .iter()
                .all(|c| c.starts_with("apt-cache show")),
            "{:?}",
            runner.calls()
        );
        assert_eq!(
            messages,
            [
                "using cached linux-image-6.1.0-56-cloud-amd64 6.1.192-2",
                "using cached busybox-static 1:1.35.0-4+deb12u1+b1"
            ]
        );
        let leftovers: Vec<_> = fs::read_dir(cache.path().join("debs"))
            .unwrap()
            .filter_map(Result::ok)
            .collect();
        assert_eq!(
            leftovers.len(),
            2,
            "no temporary download directories left behind"
        );
    }

    #[test]
    fn unpacked_package_needs_no_deb() {
        let cache = tempfile::tempdir().unwrap();
        fetch_minimal(&fake_apt(), cache.path(), None, &mut |_| {}).unwrap();
        fs::remove_dir_all(cache.path().join("debs")).unwrap();
        let runner = fake_apt();
        fetch_minimal(&runner, cache.path(), None, &mut |_| {}).unwrap();
        assert!(
            runner
                .calls()
                .iter()
                .all(|c| c.starts_with("apt-cache show")),
            "{:?}",
            runner.calls()
        );
    }

    #[test]
    fn kernel_alone_needs_no_busybox() {
        let cache = tempfile::tempdir().unwrap();
        let runner = fake_apt();
        let kernel = fetch_kernel(&runner, cache.path(), None, &mut |_| {}).unwrap();
        assert_eq!(kernel.release, "6.1.0-56-cloud-amd64");
        assert!(
            runner.calls().iter().all(|c| !c.contains("busybox")),
            "{:?}",
            runner.calls()
        );
    }

    #[test]
    fn a_pinned_kernel_release_skips_the_metapackage() {
        let cache = tempfile::tempdir().unwrap();
        let runner = fake_apt();
        let kernel = fetch_kernel(
            &runner,
            cache.path(),
            Some("6.1.0-56-cloud-amd64"),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(kernel.release, "6.1.0-56-cloud-amd64");
        assert!(
            runner
                .calls()
                .iter()
                .all(|c| !c.contains("linux-image-cloud-amd64")),
            "{:?}",
            runner.calls()
        );
    }

    #[test]
    fn a_pinned_kernel_gone_from_the_archive_says_so() {
        let cache = tempfile::tempdir().unwrap();
        let runner = apt_knows_nothing();
        let err = fetch_minimal(
            &runner,
            cache.path(),
            Some("6.1.0-9-cloud-amd64"),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(
            err,
            PackageError::UnknownPackage { .. } | PackageError::KernelGone { .. }
        ));
        let err = fetch_kernel(
            &runner,
            cache.path(),
            Some("6.1.0-9-cloud-amd64"),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "the kernel 6.1.0-9-cloud-amd64 is not offered by the host's apt sources any more"
            ),
            "{err}"
        );
    }

    #[test]
    fn empty_package_lists_say_to_run_apt_get_update() {
        let cache = tempfile::tempdir().unwrap();
        let runner = apt_knows_nothing();
        let err = fetch_minimal(&runner, cache.path(), None, &mut |_| {}).unwrap_err();
        assert_eq!(
            err.to_string(),
            "apt knows no package linux-image-cloud-amd64: run apt-get update (Debian's main archive must be in the apt sources)"
        );
    }

    #[test]
    fn stanzas_fold_continuation_lines() {
        let stanzas = parse_stanzas(&format!("{KERNEL}\nPackage: other\nVersion: 9\n\n"));
        assert_eq!(stanzas.len(), 2);
        assert_eq!(stanzas[0].version, "6.1.192-2");
        assert_eq!(
            stanzas[0].depends,
            "kmod, linux-base (>= 4.3~), initramfs-tools"
        );
        assert_eq!(
            (stanzas[1].package.as_str(), stanzas[1].version.as_str()),
            ("other", "9")
        );
        assert_eq!(
            kernel_dependency("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)").as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(kernel_dependency("kmod, linux-base"), None);
    }
}
