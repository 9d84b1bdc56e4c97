//! Installing Debian: choosing and running mmdebstrap (or debootstrap), with
//! the `.deb` cache ([`super::cache`]) wired in so a second build of the
//! same packages downloads nothing. Owns the installers' command lines;
//! what happens to the tree afterwards is [`super::tree`]'s.
//!
//! 1. [`Host::probe`] looks at the machine: the effective uid, which
//!    programs are in `PATH`, whether unprivileged user namespaces are open
//!    and the user has subordinate ids, which mmdebstrap hooks exist.
//! 2. [`plan`] picks the installer. As root: mmdebstrap `--mode=root` into
//!    a directory, whose owners are then right. Unprivileged: `--mode=unshare`
//!    (or `fakeroot` where user namespaces are closed) into a tarball, which
//!    keeps the owners a directory would lose; in unshare mode the chroot
//!    goes where the namespace's root can reach ([`super::scratch`]).
//!    Without mmdebstrap, root can still use debootstrap (slower, no dpkg
//!    path filters: the tree is thinned afterwards).
//! 3. [`ArchiveCache`]: `<cache>/debian-archives/<suite>` is copied into the
//!    chroot's `/var/cache/apt/archives` before apt runs (`sync-in` setup
//!    hook, with `--skip=essential/unlink` so apt keeps what it fetched), and
//!    the directory is copied out after the install (`sync-out` customize
//!    hook) into the cache's fresh directory ([`super::cache`]). mmdebstrap
//!    removes the packages from the tree itself.
//! 4. [`install`] runs the installer through [`Runner::run_lines`], each
//!    output line becoming a progress message.
//!
//! The sources are mmdebstrap's default: `deb.debian.org` for the suite
//! plus its `-updates` and `-security` suites for a stable release. The
//! host's apt sources are not read (mmdebstrap reads sources only from its
//! arguments or, with no suite, from stdin).

use std::fs;
use std::path::{Path, PathBuf};

use banger_sys::command::{Cmd, Runner, which};

use super::DebianError;
use super::cache::ArchiveCache;
use super::scratch;

/// Where Debian's mmdebstrap package puts its hook directories.
const HOOKS: &str = "/usr/share/mmdebstrap/hooks";
/// dpkg filters: no documentation, manual pages or translations in the
/// image (dpkg globs have no `{a,b}`, hence one option each).
const DPKG_OPTS: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
];
/// debootstrap's mirror; mmdebstrap picks the same one by default.
const MIRROR: &str = "http://deb.debian.org/debian";
const ARCHIVES: &str = "/var/cache/apt/archives";

/// How mmdebstrap gets root's powers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Root,
    Unshare,
    Fakeroot,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Root => "root",
            Mode::Unshare => "unshare",
            Mode::Fakeroot => "fakeroot",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installer {
    Mmdebstrap { mode: Mode, hook_dirs: Vec<PathBuf> },
    Debootstrap,
}

impl Installer {
    pub fn program(&self) -> &'static str {
        match self {
            Installer::Mmdebstrap { .. } => "mmdebstrap",
            Installer::Debootstrap => "debootstrap",
        }
    }

    /// True when the system comes as a tarball to unpack (unprivileged
    /// modes), false when it is written straight into the tree.
    pub fn via_tarball(&self) -> bool {
        matches!(
            self,
            Installer::Mmdebstrap {
                mode: Mode::Unshare | Mode::Fakeroot,
                ..
            }
        )
    }
}

impl std::fmt::Display for Installer {
    /// `mmdebstrap --mode=unshare`, `debootstrap`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Installer::Mmdebstrap { mode, .. } => write!(f, "mmdebstrap --mode={}", mode.as_str()),
            Installer::Debootstrap => f.write_str("debootstrap"),
        }
    }
}

/// The installer to run, and what the user should know about the choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub installer: Installer,
    pub notes: Vec<String>,
    /// Where the chroot's private directory goes (unshare mode); `None`:
    /// in the staging directory ([`super::scratch`]).
    pub chroot_base: Option<PathBuf>,
}

/// What [`plan`] needs to know about the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    pub euid: u32,
    pub mmdebstrap: bool,
    pub debootstrap: bool,
    /// `fakeroot` and `fakechroot`, for mmdebstrap's fakeroot mode.
    pub fakeroot: bool,
    /// `dpkg-architecture` (dpkg-dev), which the eatmydata hook runs.
    pub dpkg_architecture: bool,
    /// Why an unprivileged user cannot use user namespaces, if they cannot.
    pub userns_blocked: Option<String>,
    /// The merged-usr and eatmydata hook directories, where they exist.
    pub merged_usr_hook: Option<PathBuf>,
    pub eatmydata_hook: Option<PathBuf>,
    /// A temporary directory every user can reach, for the chroot of an
    /// unshare-mode build ([`super::scratch`]).
    pub reachable_tmp: Option<PathBuf>,
}

impl Host {
    pub fn probe() -> Host {
        let euid = banger_sys::process::euid();
        let hook = |name: &str| Some(Path::new(HOOKS).join(name)).filter(|d| d.is_dir());
        Host {
            euid,
            mmdebstrap: which("mmdebstrap").is_some(),
            debootstrap: which("debootstrap").is_some(),
            fakeroot: which("fakeroot").is_some() && which("fakechroot").is_some(),
            dpkg_architecture: which("dpkg-architecture").is_some(),
            userns_blocked: if euid == 0 {
                None
            } else {
                let uidmap = which("newuidmap").is_some() && which("newgidmap").is_some();
                userns_blocked(Path::new("/proc/sys"), Path::new("/etc"), euid, uidmap)
            },
            merged_usr_hook: hook("merged-usr"),
            eatmydata_hook: hook("eatmydata"),
            reachable_tmp: scratch::reachable_base(&scratch::candidates(
                std::env::var_os("TMPDIR").as_deref(),
            )),
        }
    }
}

/// Why mmdebstrap's unshare mode cannot work for `uid`, reading the
/// sysctls under `proc_sys` and the id files under `etc`; `uidmap` says
/// whether `newuidmap` and `newgidmap` are installed.
pub fn userns_blocked(proc_sys: &Path, etc: &Path, uid: u32, uidmap: bool) -> Option<String> {
    let sysctl = |name: &str| {
        fs::read_to_string(proc_sys.join(name.replace('.', "/")))
            .ok()
            .map(|v| v.trim().to_string())
    };
    for (name, closed) in [
        ("kernel.unprivileged_userns_clone", "0"),
        ("user.max_user_namespaces", "0"),
        ("kernel.apparmor_restrict_unprivileged_userns", "1"),
    ] {
        if sysctl(name).as_deref() == Some(closed) {
            return Some(format!("sysctl {name} is {closed}"));
        }
    }
    if !uidmap {
        return Some("newuidmap and newgidmap (package uidmap) are not in PATH".into());
    }
    let user = fs::read_to_string(etc.join("passwd"))
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_default();
    for file in ["subuid", "subgid"] {
        let listed = fs::read_to_string(etc.join(file)).is_ok_and(|text| {
            text.lines().any(|l| {
                let owner = l.split(':').next().unwrap_or("");
                !owner.is_empty() && (owner == user || owner == uid.to_string())
            })
        });
        if !listed {
            return Some(format!(
                "/etc/{file} has no range for {}",
                if user.is_empty() {
                    uid.to_string()
                } else {
                    user.clone()
                }
            ));
        }
    }
    None
}

/// Picks the installer for `host`; see the module doc.
pub fn plan(host: &Host) -> Result<Plan, DebianError> {
    let mut notes = Vec::new();
    if !host.mmdebstrap {
        if host.debootstrap && host.euid == 0 {
            notes.push(
                "mmdebstrap not found in PATH: using debootstrap, which is slower (apt-get install mmdebstrap)"
                    .to_string(),
            );
            return Ok(Plan {
                installer: Installer::Debootstrap,
                notes,
                chroot_base: None,
            });
        }
        return Err(DebianError::NoMmdebstrap {
            debootstrap_needs_root: host.debootstrap,
        });
    }
    let mode = if host.euid == 0 {
        Mode::Root
    } else if let Some(reason) = &host.userns_blocked {
        if !host.fakeroot {
            return Err(DebianError::NoUnprivilegedMode {
                reason: reason.clone(),
            });
        }
        notes.push(format!(
            "user namespaces are unavailable ({reason}): using mmdebstrap's fakeroot mode, which is slower and keeps no package cache"
        ));
        Mode::Fakeroot
    } else {
        Mode::Unshare
    };
    let chroot_base = match mode {
        Mode::Unshare => Some(
            host.reachable_tmp
                .clone()
                .ok_or(DebianError::NoReachableTmp)?,
        ),
        Mode::Root | Mode::Fakeroot => None,
    };
    let mut hook_dirs: Vec<PathBuf> = host.merged_usr_hook.iter().cloned().collect();
    match (&host.eatmydata_hook, host.dpkg_architecture) {
        (Some(dir), true) => hook_dirs.push(dir.clone()),
        (Some(_), false) => notes.push(
            "not using mmdebstrap's eatmydata hook: dpkg-architecture (package dpkg-dev) not found in PATH"
                .to_string(),
        ),
        (None, _) => {}
    }
    Ok(Plan {
        installer: Installer::Mmdebstrap { mode, hook_dirs },
        notes,
        chroot_base,
    })
}

/// What to install, and where.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub suite: &'a str,
    /// Installed on top of the `minbase` variant, sorted.
    pub packages: &'a [String],
    /// mmdebstrap's output: a directory that must not exist yet, or a
    /// tarball (see [`Installer::via_tarball`]).
    pub output: &'a Path,
    /// For the installer's temporary chroot (`TMPDIR`): see
    /// [`super::scratch`].
    pub scratch: &'a Path,
    /// Kernel modules for mmdebstrap to put in the system.
    pub modules: Option<Modules<'a>>,
}

/// A kernel's modules to install under `/lib/modules/<release>`.
#[derive(Debug, Clone, Copy)]
pub struct Modules<'a> {
    /// `lib/modules/<release>` in the unpacked kernel package.
    pub dir: &'a Path,
    pub release: &'a str,
}

/// The mmdebstrap command line for `target` in `mode`.
pub fn mmdebstrap(
    mode: Mode,
    hook_dirs: &[PathBuf],
    target: &Target<'_>,
    cache: &ArchiveCache,
) -> Cmd {
    let format = match mode {
        Mode::Root => "directory",
        Mode::Unshare | Mode::Fakeroot => "tar",
    };
    let mut cmd = Cmd::new("mmdebstrap")
        .arg("--variant=minbase")
        .arg(format!("--mode={}", mode.as_str()))
        .arg(format!("--format={format}"))
        .arg(format!("--include={}", target.packages.join(",")))
        .args(DPKG_OPTS.iter().map(|o| format!("--dpkgopt={o}")))
        .args(
            hook_dirs
                .iter()
                .map(|d| format!("--hook-dir={}", d.display())),
        );
    // Special hooks run tar inside the chroot in fakeroot mode, which an
    // empty chroot at setup time does not have.
    if mode != Mode::Fakeroot {
        cmd = cmd.args([
            "--skip=essential/unlink".to_string(),
            format!("--setup-hook=mkdir -p \"$1\"{ARCHIVES}"),
            format!("--setup-hook=sync-in {} {ARCHIVES}", cache.suite()),
            // sync-in gives the directory the cache's owner (the build's
            // user in unshare mode), and the tarball would keep it.
            format!("--setup-hook=chown 0:0 \"$1\"{ARCHIVES}"),
            format!(
                "--customize-hook=sync-out {ARCHIVES} {}",
                cache.fresh_name()
            ),
        ]);
    }
    if let Some(modules) = &target.modules {
        // Inside the user namespace or the fakeroot session, so the files
        // are root's and the tree's own depmod indexes them.
        let release = modules.release;
        cmd = cmd.args([
            "--customize-hook=mkdir -p \"$1/lib/modules\"".to_string(),
            format!(
                "--customize-hook=copy-in {} /lib/modules",
                relative_to(cache.root(), modules.dir).display()
            ),
            format!(
                "--customize-hook=chown -R 0:0 \"$1/lib/modules/{release}\" && chroot \"$1\" depmod {release}"
            ),
        ]);
    }
    cmd.arg(target.suite)
        .arg(target.output)
        .cwd(cache.root())
        .env("TMPDIR", target.scratch)
}

/// `path` relative to the directory `from` when they share `from`'s parent
/// (the cache directory; special hooks split at spaces, and the relative
/// path has none of the cache directory's), absolute otherwise.
fn relative_to(from: &Path, path: &Path) -> PathBuf {
    from.parent()
        .and_then(|parent| path.strip_prefix(parent).ok())
        .map_or_else(|| path.to_path_buf(), |rel| Path::new("..").join(rel))
}

/// The debootstrap command line for `target` (as root only).
pub fn debootstrap(target: &Target<'_>, cache: &ArchiveCache) -> Cmd {
    Cmd::new("debootstrap")
        .arg("--variant=minbase")
        .arg("--merged-usr")
        .arg(format!("--include={}", target.packages.join(",")))
        .arg(format!("--cache-dir={}", cache.dir().display()))
        .arg(target.suite)
        .arg(target.output)
        .arg(MIRROR)
        .env("TMPDIR", target.scratch)
}

/// Runs `installer` for `target`; returns how many packages the cache
/// holds for the next build.
pub fn install(
    runner: &dyn Runner,
    installer: &Installer,
    target: &Target<'_>,
    cache_dir: &Path,
    progress: &mut dyn FnMut(String),
) -> Result<usize, DebianError> {
    let cache = ArchiveCache::open(cache_dir, target.suite)?;
    let cached = cache.count();
    let uses_cache = !matches!(
        installer,
        Installer::Mmdebstrap {
            mode: Mode::Fakeroot,
            ..
        }
    );
    if cached > 0 && uses_cache {
        progress(format!(
            "{cached} packages cached in {}",
            cache.dir().display()
        ));
    }
    let cmd = match installer {
        Installer::Mmdebstrap { mode, hook_dirs } => mmdebstrap(*mode, hook_dirs, target, &cache),
        Installer::Debootstrap => debootstrap(target, &cache),
    };
    let mut forward = |line: &str| {
        if !is_noise(line) {
            progress(line.to_string());
        }
    };
    runner
        .run_lines(&cmd, &mut forward)
        .map_err(|source| DebianError::Install {
            program: installer.program(),
            suite: target.suite.to_string(),
            source,
        })?;
    match cache.commit() {
        Ok(kept) => Ok(kept),
        // The system is installed; only the next build pays for this.
        Err(e) => {
            let why = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s}"));
            progress(format!("the package cache was not updated ({e}{why})"));
            Ok(0)
        }
    }
}

/// dpkg's `(Reading database ... 45%` counters: a hundred lines a run that
/// say nothing.
fn is_noise(line: &str) -> bool {
    line.starts_with("(Reading database ...") && !line.contains("files and directories")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeRunner, stdout};

    fn root_host() -> Host {
        Host {
            euid: 0,
            mmdebstrap: true,
            debootstrap: false,
            fakeroot: true,
            dpkg_architecture: true,
            userns_blocked: None,
            merged_usr_hook: Some(PathBuf::from("/usr/share/mmdebstrap/hooks/merged-usr")),
            eatmydata_hook: Some(PathBuf::from("/usr/share/mmdebstrap/hooks/eatmydata")),
            reachable_tmp: Some(PathBuf::from("/var/tmp")),
        }
    }

    fn packages() -> Vec<String> {
        ["git", "kmod", "openssh-server"].map(String::from).to_vec()
    }

    /// The command `plan` + `install` run for `host`, through a fake.
    fn command_for(host: &Host) -> (Vec<String>, Cmd) {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(host).unwrap();
        let pkgs = packages();
        let modules = dir
            .path()
            .join("cache/extract/linux-image-6.1.0-56-cloud-amd64_6.1.192-2/lib/modules/6.1.0-56-cloud-amd64");
        let target = Target {
            suite: "bookworm",
            packages: &pkgs,
            output: &dir.path().join("out"),
            scratch: dir.path(),
            modules: Some(Modules {
                dir: &modules,
                release: "6.1.0-56-cloud-amd64",
            }),
        };
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen2 = seen.clone();
        let runner = FakeRunner::new(move |cmd| {
            *seen2.lock().unwrap() = Some(cmd.clone());
            Ok(stdout(
                "I: success in 31.4 seconds\n(Reading database ... 5%\n",
            ))
        });
        let mut messages = Vec::new();
        install(
            &runner,
            &plan.installer,
            &target,
            &dir.path().join("cache"),
            &mut |m| messages.push(m),
        )
        .unwrap();
        assert_eq!(messages, ["I: success in 31.4 seconds"]);
        let cmd = seen.lock().unwrap().take().unwrap();
        (cmd.args_lossy(), cmd)
    }

    #[test]
    fn root_builds_a_directory_with_filters_hooks_and_the_cache() {
        let (args, cmd) = command_for(&root_host());
        assert_eq!(cmd.program, "mmdebstrap");
        assert_eq!(
            args[..9],
            [
                "--variant=minbase",
                "--mode=root",
                "--format=directory",
                "--include=git,kmod,openssh-server",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/info/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--dpkgopt=path-include=/usr/share/locale/locale.alias",
            ]
        );
        assert_eq!(
            args[9..13],
            [
                "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
                "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
                "--skip=essential/unlink",
                "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives",
            ]
        );
        assert_eq!(
            args[13..15],
            [
                "--setup-hook=sync-in bookworm /var/cache/apt/archives",
                "--setup-hook=chown 0:0 \"$1\"/var/cache/apt/archives"
            ]
        );
        assert!(
            args[15]
                .starts_with("--customize-hook=sync-out /var/cache/apt/archives .bookworm.new-"),
            "{}",
            args[15]
        );
        assert_eq!(
            args[16..19],
            [
                "--customize-hook=mkdir -p \"$1/lib/modules\"",
                "--customize-hook=copy-in ../extract/linux-image-6.1.0-56-cloud-amd64_6.1.192-2/lib/modules/6.1.0-56-cloud-amd64 /lib/modules",
                "--customize-hook=chown -R 0:0 \"$1/lib/modules/6.1.0-56-cloud-amd64\" && chroot \"$1\" depmod 6.1.0-56-cloud-amd64",
            ]
        );
        assert_eq!(args[19], "bookworm");
        assert!(args[20].ends_with("/out"));
        assert_eq!(args.len(), 21);
        assert!(cmd.cwd.unwrap().ends_with("cache/debian-archives"));
        assert!(cmd.env.iter().any(|(k, _)| k == "TMPDIR"));
    }

    #[test]
    fn unprivileged_builds_a_tarball_in_a_user_namespace() {
        let host = Host {
            euid: 1000,
            ..root_host()
        };
        let (args, _) = command_for(&host);
        assert_eq!(args[1..3], ["--mode=unshare", "--format=tar"]);
        assert!(args.iter().any(|a| a.starts_with("--setup-hook=sync-in ")));
        let p = plan(&host).unwrap();
        assert!(p.installer.via_tarball());
        assert_eq!(p.chroot_base.as_deref(), Some(Path::new("/var/tmp")));
        assert_eq!(plan(&root_host()).unwrap().chroot_base, None);
    }

    #[test]
    fn unshare_mode_without_a_reachable_tmp_says_to_set_tmpdir() {
        let err = plan(&Host {
            euid: 1000,
            reachable_tmp: None,
            ..root_host()
        })
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "no temporary directory every user can reach for mmdebstrap's chroot (tried $TMPDIR, /var/tmp, /tmp)"
            ),
            "{err}"
        );
    }

    #[test]
    fn closed_user_namespaces_fall_back_to_fakeroot_without_cache_hooks() {
        let host = Host {
            euid: 1000,
            userns_blocked: Some("sysctl user.max_user_namespaces is 0".into()),
            ..root_host()
        };
        let p = plan(&host).unwrap();
        assert_eq!(p.chroot_base, None, "fakeroot runs as the user");
        assert!(p.notes[0].starts_with("user namespaces are unavailable (sysctl user.max_user_namespaces is 0): using mmdebstrap's fakeroot mode"), "{:?}", p.notes);
        let (args, _) = command_for(&host);
        assert_eq!(args[1], "--mode=fakeroot");
        assert!(!args.iter().any(|a| a.contains("hook=sync")), "{args:?}");

        let err = plan(&Host {
            fakeroot: false,
            ..host
        })
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "an unprivileged build needs user namespaces (sysctl user.max_user_namespaces is 0) or fakeroot"
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_mmdebstrap_says_how_to_install_it_or_uses_debootstrap_as_root() {
        let none = Host {
            mmdebstrap: false,
            ..root_host()
        };
        assert_eq!(
            plan(&none).unwrap_err().to_string(),
            "mmdebstrap not found in PATH: install mmdebstrap (apt-get install mmdebstrap)"
        );
        let with_debootstrap = Host {
            debootstrap: true,
            ..none.clone()
        };
        let p = plan(&with_debootstrap).unwrap();
        assert_eq!(p.installer, Installer::Debootstrap);
        assert!(p.notes[0].contains("using debootstrap, which is slower"));
        let (args, cmd) = command_for(&with_debootstrap);
        assert_eq!(cmd.program, "debootstrap");
        assert_eq!(
            args[..3],
            [
                "--variant=minbase",
                "--merged-usr",
                "--include=git,kmod,openssh-server"
            ]
        );
        assert!(
            args[3].starts_with("--cache-dir=/") && args[3].ends_with("debian-archives/bookworm")
        );
        assert_eq!(args[4], "bookworm");
        assert_eq!(args[6], "http://deb.debian.org/debian");
        assert_eq!(args.len(), 7, "debootstrap gets its modules afterwards");

        let err = plan(&Host {
            euid: 1000,
            ..with_debootstrap
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("(debootstrap, which is installed, needs root)"),
            "{err}"
        );
    }

    #[test]
    fn eatmydata_hook_is_skipped_without_dpkg_architecture() {
        let p = plan(&Host {
            dpkg_architecture: false,
            ..root_host()
        })
        .unwrap();
        let Installer::Mmdebstrap { hook_dirs, .. } = &p.installer else {
            panic!("{p:?}")
        };
        assert_eq!(hook_dirs.len(), 1);
        assert!(p.notes[0].contains("dpkg-architecture (package dpkg-dev)"));
    }

    #[test]
    fn user_namespaces_need_sysctls_open_and_subordinate_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_sys, etc) = (dir.path().join("sys"), dir.path().join("etc"));
        fs::create_dir_all(proc_sys.join("user")).unwrap();
        fs::create_dir_all(&etc).unwrap();
        fs::write(
            etc.join("passwd"),
            "root:x:0:0::/root:/bin/sh\nana:x:1000:1000::/home/ana:/bin/sh\n",
        )
        .unwrap();
        fs::write(etc.join("subuid"), "ana:100000:65536\n").unwrap();
        fs::write(etc.join("subgid"), "1000:100000:65536\n").unwrap();
        fs::write(proc_sys.join("user/max_user_namespaces"), "63000\n").unwrap();
        assert_eq!(userns_blocked(&proc_sys, &etc, 1000, true), None);
        assert_eq!(
            userns_blocked(&proc_sys, &etc, 1001, true).as_deref(),
            Some("/etc/subuid has no range for 1001")
        );
        assert!(
            userns_blocked(&proc_sys, &etc, 1000, false)
                .unwrap()
                .contains("(package uidmap)")
        );
        fs::write(proc_sys.join("user/max_user_namespaces"), "0\n").unwrap();
        assert_eq!(
            userns_blocked(&proc_sys, &etc, 1000, true).as_deref(),
            Some("sysctl user.max_user_namespaces is 0")
        );
    }
}
