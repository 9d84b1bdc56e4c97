//! The real `minimal` build: Debian packages through the host's apt, real
//! `mkfs.ext4`. Needs apt with package lists and network access to the
//! archive (or a warm package cache); skips, saying what is missing, on a
//! host without the tools (fails instead under `BANGER_E2E_REQUIRED=1`).
//! No root needed, nothing mounted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use banger_image::{
    BuildEvent, BuildParams, ImageError, MINIMAL_STAGES, Manifest, PackageError, build_minimal,
    verify,
};
use banger_sys::command::{SystemRunner, which};

fn missing_tools() -> Vec<&'static str> {
    ["apt-get", "apt-cache", "dpkg-deb", "mkfs.ext4", "debugfs"]
        .into_iter()
        .filter(|t| which(t).is_none())
        .collect()
}

/// Skips with the reason, or fails where CI demands the real thing
/// (`BANGER_E2E_REQUIRED=1`).
fn skip(reason: &str) {
    if std::env::var_os("BANGER_E2E_REQUIRED").is_some_and(|v| v == "1") {
        panic!("the real minimal build cannot run: {reason}");
    }
    println!("skipping the real minimal build: {reason}");
}

/// A stand-in agent: any static ELF does for building.
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

fn build(
    cache: &Path,
    out: &Path,
    agent: &Path,
) -> (Result<Manifest, ImageError>, Vec<BuildEvent>) {
    let params = BuildParams {
        name: "minimal".into(),
        cache_dir: cache.to_path_buf(),
        agent_bin: agent.to_path_buf(),
        out_dir: out.to_path_buf(),
        runner: Arc::new(SystemRunner),
        kernel_release: None,
        expect_installed: Default::default(),
    };
    let mut events = Vec::new();
    let result = build_minimal(&params, &mut |e| events.push(e));
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
fn minimal_image_builds_from_debian_packages() {
    let missing = missing_tools();
    if !missing.is_empty() {
        skip(&format!("{} not found in PATH", missing.join(", ")));
        return;
    }
    // Kept between runs so only the first downloads.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("banger-image-cache");
    let work = tempfile::tempdir().unwrap();
    let agent = dummy_agent(work.path());
    let images = work.path().join("images");
    let out = images.join("minimal");

    let started = Instant::now();
    let (result, events) = build(&cache, &out, &agent);
    let manifest = match result {
        Err(ImageError::Packages(e @ PackageError::UnknownPackage { .. })) => {
            skip(&e.to_string());
            return;
        }
        other => other.expect("minimal build"),
    };
    println!("minimal build took {:.1}s", started.elapsed().as_secs_f64());
    for e in &events {
        println!("{e:?}");
    }

    // Every stage started and finished, in order.
    let finished: Vec<&str> = events
        .iter()
        .filter_map(|e| {
            if let BuildEvent::StageFinished { name, .. } = e {
                Some(*name)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        finished,
        MINIMAL_STAGES.iter().map(|s| s.name).collect::<Vec<_>>()
    );

    // The image directory is complete, intact and alone.
    assert_eq!(Manifest::load(&out).unwrap(), manifest);
    assert!(verify(&out).unwrap().iter().all(|c| c.is_ok()));
    assert_eq!(
        std::fs::read_dir(&images).unwrap().count(),
        1,
        "no staging directory left beside the image"
    );
    assert_eq!(
        manifest.kernel_file(),
        Some("vmlinux"),
        "the LZ4 vmlinux was extracted"
    );
    assert!(
        std::fs::read(out.join("vmlinux"))
            .unwrap()
            .starts_with(b"\x7fELF")
    );
    assert!(
        manifest
            .kernel_version
            .as_deref()
            .unwrap()
            .ends_with("-cloud-amd64")
    );
    assert_eq!(
        manifest.modules[..5],
        [
            "virtio_ring.ko",
            "virtio.ko",
            "virtio_mmio.ko",
            "virtio_blk.ko",
            "virtio_console.ko"
        ]
    );
    for f in &manifest.files {
        println!("{:>16} {:>10} bytes", f.name, f.size);
    }

    // The initramfs is a newc archive with our /init.
    let initrd = std::fs::read(out.join("initrd.img")).unwrap();
    assert!(initrd.starts_with(b"070701"));
    // The name follows the header's last field, `check`, always zero here.
    assert!(
        initrd.windows(13).any(|w| w == b"00000000init\0"),
        "no /init in initrd.img"
    );

    // The root filesystem holds busybox owned by root, and os-release.
    let rootfs = out.join("rootfs.ext4");
    let stat = debugfs(&rootfs, "stat /bin/busybox");
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");
    assert!(debugfs(&rootfs, "cat /etc/os-release").contains("ID=banger-minimal"));
    assert!(debugfs(&rootfs, "stat /bin/sh").contains("Type: symlink"));

    // The work seed has a private root and grows into a large disk.
    let seed = out.join("work-seed.ext4");
    assert!(debugfs(&seed, "stat /").contains("Mode:  0700"));
    assert!(debugfs(&seed, "ls /").contains(".profile"));
    if which("resize2fs").is_some() && which("e2fsck").is_some() {
        let disk = work.path().join("work.ext4");
        std::fs::copy(&seed, &disk).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        let resized = Command::new("resize2fs").arg(&disk).output().unwrap();
        assert!(
            resized.status.success(),
            "{}",
            String::from_utf8_lossy(&resized.stderr)
        );
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(&disk)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    } else {
        println!("not growing the work seed: resize2fs or e2fsck not found in PATH");
    }

    // A second build reuses the package cache; an existing image is refused.
    let (again, events) = build(&cache, &images.join("again"), &agent);
    again.unwrap();
    assert!(events.iter().any(
        |e| matches!(e, BuildEvent::Progress { message, .. } if message.starts_with("using cached"))
    ));
    let (refused, _) = build(&cache, &out, &agent);
    assert!(refused.unwrap_err().to_string().contains("already exists"));
    assert_eq!(std::fs::read_dir(&images).unwrap().count(), 2);
}
