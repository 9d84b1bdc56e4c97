//! The real `debian` build: the kernel through the host's apt, the system
//! through mmdebstrap from deb.debian.org, real `mkfs.ext4`. Runs as root
//! (mmdebstrap's root mode) or as a user with user namespaces and
//! subordinate ids (unshare mode); skips, saying what is missing, on a host
//! without the tools, the network or either (fails instead under
//! `BANGER_E2E_REQUIRED=1`). Nothing is mounted on the host.
//!
//! The package cache is kept under the target directory so only the first
//! run downloads; `BANGER_IMAGE_TEST_CACHE` puts it elsewhere (to run the
//! test binary as another user). `BANGER_IMAGE_TEST_KEEP=1` keeps the
//! images built, to look at them.

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_image::{
    BuildEvent, BuildParams, DEBIAN_BASE_PACKAGES, DEBIAN_STAGES, DebianError, DebianOptions,
    ImageError, Manifest, PackageError, SOURCE_DEBIAN, build_debian, verify,
};
use banger_sys::command::{SystemRunner, which};

const MIRROR: &str = "deb.debian.org:80";

/// Skips with the reason, or fails where CI demands the real thing.
fn skip(reason: &str) {
    if std::env::var_os("BANGER_E2E_REQUIRED").is_some_and(|v| v == "1") {
        panic!("the real debian build cannot run: {reason}");
    }
    println!("SKIPPED the real debian build: {reason}");
}

/// What keeps this host from building, if anything.
fn missing() -> Option<String> {
    let tools: Vec<&str> = [
        "apt-get",
        "apt-cache",
        "dpkg-deb",
        "mkfs.ext4",
        "debugfs",
        "tar",
    ]
    .into_iter()
    .filter(|t| which(t).is_none())
    .collect();
    if !tools.is_empty() {
        return Some(format!("{} not found in PATH", tools.join(", ")));
    }
    if which("mmdebstrap").is_none() && which("debootstrap").is_none() {
        return Some("mmdebstrap not found in PATH (apt-get install mmdebstrap)".into());
    }
    // apt may reach the mirror through a proxy this probe cannot see.
    let proxied = ["http_proxy", "HTTP_PROXY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    let reachable = MIRROR.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).is_ok())
    });
    if !proxied && !reachable {
        return Some(format!("no network: cannot connect to {MIRROR}"));
    }
    None
}

fn dummy_agent(dir: &Path) -> PathBuf {
    let agent = dir.join("banger-agent");
    std::fs::write(&agent, static_elf_header()).unwrap();
    agent
}

/// The header of an x86_64 executable with no program headers: no loader,
/// no shared libraries, so the build takes it as a static agent.
fn static_elf_header() -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little-endian
    h[6] = 1;
    h[16] = 2; // ET_EXEC
    h[18] = 62; // x86_64
    h
}

/// One build, with each stage's duration printed.
fn build(
    cache: &Path,
    out: &Path,
    agent: &Path,
    opts: &DebianOptions,
    kernel_release: Option<String>,
    expect_installed: BTreeMap<String, String>,
) -> (Result<Manifest, ImageError>, Vec<BuildEvent>) {
    let params = BuildParams {
        name: "debian".into(),
        cache_dir: cache.to_path_buf(),
        agent_bin: agent.to_path_buf(),
        out_dir: out.to_path_buf(),
        runner: Arc::new(SystemRunner),
        kernel_release,
        expect_installed,
    };
    let started = Instant::now();
    let mut stage_started = HashMap::new();
    let mut events = Vec::new();
    let result = build_debian(&params, opts, &mut |e| {
        match &e {
            BuildEvent::StageStarted { name, .. } => {
                stage_started.insert(*name, Instant::now());
            }
            BuildEvent::StageFinished { name, detail } => println!(
                "  {name:>15} {:>5.1}s  {}",
                stage_started[name].elapsed().as_secs_f64(),
                detail.as_deref().unwrap_or("")
            ),
            BuildEvent::Progress { .. } => {}
        }
        events.push(e);
    });
    println!("debian build took {:.1}s", started.elapsed().as_secs_f64());
    (result, events)
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn debian_image_builds_with_mmdebstrap() {
    if let Some(reason) = missing() {
        skip(&reason);
        return;
    }
    let cache = std::env::var_os("BANGER_IMAGE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("banger-image-cache"));
    let mut work = tempfile::tempdir().unwrap();
    if std::env::var_os("BANGER_IMAGE_TEST_KEEP").is_some_and(|v| v == "1") {
        work.disable_cleanup(true);
        println!("keeping the images in {}", work.path().display());
    }
    let agent = dummy_agent(work.path());
    let images = work.path().join("images");
    let out = images.join("debian");

    let (result, events) = build(
        &cache,
        &out,
        &agent,
        &DebianOptions::default(),
        None,
        BTreeMap::new(),
    );
    let manifest = match result {
        Err(ImageError::Packages(e @ PackageError::UnknownPackage { .. })) => {
            skip(&e.to_string());
            return;
        }
        Err(ImageError::Debian(
            e @ (DebianError::NoMmdebstrap { .. } | DebianError::NoUnprivilegedMode { .. }),
        )) => {
            skip(&e.to_string());
            return;
        }
        other => other.expect("debian build"),
    };
    for e in &events {
        if let BuildEvent::Progress { name, message } = e {
            println!("  {name}: {message}");
        }
    }

    let finished: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            BuildEvent::StageFinished { name, .. } => Some(*name),
            _ => None,
        })
        .collect();
    assert_eq!(
        finished,
        DEBIAN_STAGES.iter().map(|s| s.name).collect::<Vec<_>>()
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            BuildEvent::Progress {
                name: "debootstrap",
                ..
            }
        )),
        "the installer's output came through as progress"
    );

    // The image is complete, intact, alone, and says what it is made of.
    assert_eq!(Manifest::load(&out).unwrap(), manifest);
    assert!(verify(&out).unwrap().iter().all(|c| c.is_ok()));
    assert_eq!(std::fs::read_dir(&images).unwrap().count(), 1);
    assert_eq!(manifest.source, SOURCE_DEBIAN);
    assert_eq!(manifest.suite.as_deref(), Some("bookworm"));
    let mut base: Vec<&str> = DEBIAN_BASE_PACKAGES.to_vec();
    base.sort();
    assert_eq!(manifest.packages, base);
    assert_eq!(manifest.kernel_file(), Some("vmlinux"));
    let release = manifest.kernel_version.clone().unwrap();
    for f in &manifest.files {
        let allocated =
            std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(out.join(&f.name)).unwrap())
                * 512;
        println!(
            "{:>16} {:>11} bytes ({} allocated)",
            f.name, f.size, allocated
        );
    }

    // The root filesystem is Debian with the tools, root's files root's,
    // system groups kept, setuid bits kept, no host identity.
    let rootfs = out.join("rootfs.ext4");
    for path in [
        "/usr/sbin/sshd",
        "/usr/bin/git",
        "/usr/bin/make",
        "/usr/bin/python3",
        "/usr/bin/sudo",
    ] {
        let stat = debugfs(&rootfs, &format!("stat {path}"));
        assert!(stat.contains("Inode:"), "{path} missing: {stat}");
    }
    let sshd = debugfs(&rootfs, "stat /usr/sbin/sshd");
    assert!(sshd.contains("User:     0   Group:     0"), "{sshd}");
    assert!(debugfs(&rootfs, "stat /usr/bin/sudo").contains("Mode:  04755"));
    assert!(
        debugfs(&rootfs, "stat /etc/shadow").contains("Group:    42"),
        "shadow group kept"
    );
    let ssh = debugfs(&rootfs, "ls /etc/ssh");
    assert!(
        ssh.contains("sshd_config") && !ssh.contains("ssh_host_"),
        "{ssh}"
    );
    assert!(debugfs(&rootfs, "cat /usr/lib/os-release").contains("ID=debian"));
    assert_eq!(debugfs(&rootfs, "cat /etc/hostname"), "localhost\n");
    assert!(!debugfs(&rootfs, "ls /var/lib/apt/lists").contains("InRelease"));
    assert!(debugfs(&rootfs, "stat /root").contains("Mode:  0700"));
    let modules = debugfs(&rootfs, &format!("ls /usr/lib/modules/{release}"));
    assert!(
        modules.contains("modules.dep"),
        "modules indexed: {modules}"
    );
    let ko = debugfs(
        &rootfs,
        &format!("stat /usr/lib/modules/{release}/modules.dep"),
    );
    assert!(ko.contains("User:     0   Group:     0"), "{ko}");
    if which("e2fsck").is_some() {
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(&rootfs)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }
    assert!(debugfs(&out.join("work-seed.ext4"), "ls /").contains(".bashrc"));

    // The manifest records every installed package and the kernel package.
    assert!(
        ["git", "openssh-server", "python3", "libc6"]
            .iter()
            .all(|p| manifest.installed.contains_key(*p)),
        "{:?}",
        manifest.installed.keys().collect::<Vec<_>>()
    );
    assert!(
        manifest
            .kernel_package
            .as_deref()
            .is_some_and(|k| k.starts_with(&format!("linux-image-{release}="))),
        "{:?}",
        manifest.kernel_package
    );

    // A rebuild from the manifest takes the same suite, packages and kernel,
    // installs the same versions and says so, and downloads no packages.
    let recipe = Manifest::load_given(&out).unwrap().recipe().unwrap();
    let opts = DebianOptions {
        suite: recipe.suite.clone().unwrap(),
        extra_packages: recipe.packages.clone(),
    };
    let (again, events) = build(
        &cache,
        &images.join("again"),
        &agent,
        &opts,
        recipe.kernel_release.clone(),
        recipe.expect_installed.clone(),
    );
    let again = again.expect("debian rebuild from the manifest");
    assert_eq!(again.packages, manifest.packages);
    assert_eq!(again.kernel_package, manifest.kernel_package);
    assert_eq!(again.installed, manifest.installed);
    let summary = format!(
        "all {} packages at the manifest's versions",
        manifest.installed.len()
    );
    assert!(
        events.iter().any(
            |e| matches!(e, BuildEvent::StageFinished { name: "debootstrap", detail: Some(d) }
            if d.contains(&summary))
        ),
        "the rebuild reports it matches: {events:?}"
    );
    let fakeroot = events.iter().any(|e| {
        matches!(e, BuildEvent::StageFinished { name: "debootstrap", detail: Some(d) }
            if d.contains("--mode=fakeroot"))
    });
    assert!(
        fakeroot
            || events.iter().any(
                |e| matches!(e, BuildEvent::Progress { name: "debootstrap", message }
            if message.contains("packages cached in"))
            ),
        "the second build used the package cache"
    );
}
