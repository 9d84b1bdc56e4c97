//! The baselines, bare QEMU on banger's own command line (`qemu::argv` of a
//! [`MachineSpec`] like the one a VM gets: the same machine, drives and
//! devices), no daemon:
//!
//! - (a0) the floor: the image's kernel with a busybox initramfs made here
//!   whose `/init` loads only the virtio-blk modules (copied out of the
//!   image's own initramfs, in its load order, without their signatures as
//!   the agent loads them), waits for the root disk (`/dev/vda`) and powers
//!   off; timed from spawn to QEMU's exit.
//! - (a) the image's own kernel, initramfs and rootfs until the agent
//!   answers the channel handshake.

use banger_core::engine::{Accel, Drive, DriveFormat, MachineSpec, qemu};
use banger_image::cpio::CpioWriter;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The modules a Debian cloud kernel needs to see a virtio-mmio disk.
const BLOCK_MODULES: [&str; 4] = ["virtio_ring", "virtio", "virtio_mmio", "virtio_blk"];

/// The floor's `/init`: no agent, no mounts but devtmpfs.
const INIT: &str = "#!/bin/sh
export PATH=/bin
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules); do insmod /lib/modules/$m || echo \"floor: insmod $m failed\"; done
while [ ! -b /dev/vda ]; do usleep 1000; done
poweroff -f
";

pub struct Bare {
    image: PathBuf,
    scratch: PathBuf,
    accel: Accel,
    /// The floor's initramfs.
    floor_initrd: PathBuf,
    /// The modules it loads, in order.
    pub modules: Vec<String>,
}

impl Bare {
    /// Makes the floor's initramfs from `image`'s and busybox.
    pub fn new(image: &Path, scratch: &Path, accel: Accel) -> Bare {
        std::fs::create_dir_all(scratch).unwrap();
        let floor_initrd = scratch.join("floor-initrd.img");
        let modules = floor_initramfs(image, &busybox(), &floor_initrd);
        Bare {
            image: image.to_owned(),
            scratch: scratch.join("vm"),
            accel,
            floor_initrd,
            modules,
        }
    }

    /// (a0): one boot of the floor, spawn to exit, in ms.
    pub fn floor(&self) -> f64 {
        let spec = self.spec(self.floor_initrd.clone());
        let t0 = Instant::now();
        let mut child = spawn(&spec);
        let limit = Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                assert!(status.success(), "the floor's qemu exited with {status}");
                return ms;
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                let console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
                panic!("the floor did not power off in {limit:?}; its console:\n{console}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// (a): one boot to the agent's first answer, in ms.
    pub fn agent(&self) -> f64 {
        let spec = self.spec(self.image.join("initrd.img"));
        let t0 = Instant::now();
        let mut child = spawn(&spec);
        let sock = qemu::agent_socket(&self.scratch);
        let mut stream = loop {
            if let Ok(s) = UnixStream::connect(&sock) {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "qemu did not create its agent socket"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        stream
            .write_all(banger_proto::sync_line("bench").as_bytes())
            .unwrap();
        let mut b = [0u8; 1];
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        stream.read_exact(&mut b).expect("agent answered");
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let _ = child.kill();
        let _ = child.wait();
        ms
    }

    /// A fresh scratch dir with a VM's three drives (a root overlay over
    /// the image, a work disk, a config drive) and the spec booting them
    /// with `initrd`.
    fn spec(&self, initrd: PathBuf) -> MachineSpec {
        let (image, scratch) = (&self.image, &self.scratch);
        let _ = std::fs::remove_dir_all(scratch);
        std::fs::create_dir_all(scratch).unwrap();
        let overlay = scratch.join("root.qcow2");
        let work = scratch.join("work.ext4");
        let config = scratch.join("config.img");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(image.join("rootfs.ext4"))
            .arg(&overlay)
            .status()
            .unwrap();
        assert!(st.success(), "qemu-img create {}", overlay.display());
        std::fs::copy(image.join("work-seed.ext4"), &work).unwrap();
        let cfg = banger_proto::GuestConfig {
            version: 1,
            vm_name: "bare".into(),
            hostname: "bare".into(),
            authorized_keys: vec![],
            network: None,
            git_identity: vec![],
            ssh_host_key: None,
        };
        std::fs::write(&config, cfg.to_drive().unwrap()).unwrap();
        let drive = |path, format, serial, read_only| Drive {
            path,
            format,
            serial,
            read_only,
        };
        MachineSpec {
            vm_id: "bench".into(),
            name: "bare".into(),
            cpus: 1,
            memory_mib: 512,
            kernel: image.join("vmlinux"),
            initrd: Some(initrd),
            cmdline_extra: String::new(),
            drives: vec![
                drive(
                    overlay,
                    DriveFormat::Qcow2,
                    banger_proto::ROOT_DRIVE_SERIAL,
                    false,
                ),
                drive(
                    work,
                    DriveFormat::Raw,
                    banger_proto::WORK_DRIVE_SERIAL,
                    false,
                ),
                drive(
                    config,
                    DriveFormat::Raw,
                    banger_proto::CONFIG_DRIVE_SERIAL,
                    true,
                ),
            ],
            nics: vec![],
            console_log: scratch.join("console.log"),
            engine_log: scratch.join("engine.log"),
            run_dir: scratch.to_owned(),
            state_dir: scratch.to_owned(),
            accel: self.accel,
            tsc_khz: banger_sys::process::tsc_khz(),
            tcg_aslr: false,
        }
    }
}

fn spawn(spec: &MachineSpec) -> std::process::Child {
    Command::new("qemu-system-x86_64")
        .args(qemu::argv(spec))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu-system-x86_64")
}

/// A static busybox: the one the minimal image's build unpacked into the
/// shared cache (Debian's `busybox-static`), else the host's
/// `busybox-static` package's.
fn busybox() -> PathBuf {
    let extract = banger_e2e::shared_cache().join("banger/extract");
    let cached = std::fs::read_dir(&extract)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin/busybox"))
        .find(|p| {
            p.parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                .is_some_and(|n| n.to_string_lossy().starts_with("busybox-static"))
                && p.is_file()
        });
    cached
        .or_else(|| {
            let host = PathBuf::from("/bin/busybox");
            is_static(&host).then_some(host)
        })
        .expect(
            "no static busybox: build the minimal image (it unpacks Debian's busybox-static) \
             or apt-get install busybox-static",
        )
}

/// Whether the ELF at `path` has no program interpreter (PT_INTERP).
fn is_static(path: &Path) -> bool {
    let Ok(out) = Command::new("file").arg("-L").arg(path).output() else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).contains("statically linked")
}

/// Writes the floor's initramfs to `out`: busybox, `/init`, and the block
/// modules of `image`'s initramfs in its load order. Returns their names.
fn floor_initramfs(image: &Path, busybox: &Path, out: &Path) -> Vec<String> {
    let initrd = std::fs::read(image.join("initrd.img")).expect("read the image's initrd.img");
    let entries = newc_files(&initrd);
    let order = entries
        .iter()
        .find(|(n, _)| n == "etc/banger/modules")
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .expect("the image's initramfs lists its modules in etc/banger/modules");
    let wanted: Vec<String> = banger_proto::modules::parse_module_list(&order)
        .into_iter()
        .filter(|m| BLOCK_MODULES.contains(&m.name().as_str()))
        .map(|m| m.file_name)
        .collect();
    assert!(
        wanted.iter().any(|m| m.starts_with("virtio_blk")),
        "the image's initramfs has no virtio_blk module (modules: {order:?})"
    );
    let mut w = CpioWriter::new(Vec::new());
    for d in ["bin", "dev", "etc", "lib", "lib/modules", "proc", "sys"] {
        w.dir(d, 0o755).unwrap();
    }
    w.char_dev("dev/console", 0o600, 5, 1).unwrap();
    w.file(
        "bin/busybox",
        0o755,
        &std::fs::read(busybox).expect("read busybox"),
    )
    .unwrap();
    for applet in ["sh", "mount", "insmod", "cat", "usleep", "poweroff", "echo"] {
        w.symlink(&format!("bin/{applet}"), "busybox").unwrap();
    }
    for m in &wanted {
        let (_, data) = entries
            .iter()
            .find(|(n, _)| n == &format!("lib/modules/banger/{m}"))
            .unwrap_or_else(|| panic!("the image's initramfs lists {m} but lacks it"));
        // Unsigned, as the agent loads them: the floor pays no signature
        // checks the agent does not.
        let data = banger_agent::modinfo::without_signature(data);
        w.file(&format!("lib/modules/{m}"), 0o644, data).unwrap();
    }
    w.file("etc/modules", 0o644, (wanted.join("\n") + "\n").as_bytes())
        .unwrap();
    w.file("init", 0o755, INIT.as_bytes()).unwrap();
    std::fs::write(out, w.finish().unwrap()).expect("write the floor's initramfs");
    wanted
}

/// The regular files of an uncompressed newc archive (what banger writes
/// as an image's `initrd.img`), names without a leading `/`.
fn newc_files(mut buf: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let start = buf.len();
    while buf.len() >= 110 && &buf[..6] == b"070701" {
        let field = |i: usize| {
            let hex = std::str::from_utf8(&buf[6 + i * 8..14 + i * 8]).expect("newc header");
            usize::from_str_radix(hex, 16).expect("newc header")
        };
        let (mode, size, namesize) = (field(1), field(6), field(11));
        let name = String::from_utf8_lossy(&buf[110..110 + namesize - 1])
            .trim_start_matches('/')
            .to_string();
        // Header and name are padded to 4 bytes from the archive's start.
        let at = start - buf.len();
        let data_at = (at + 110 + namesize).next_multiple_of(4) - at;
        if name == "TRAILER!!!" {
            break;
        }
        if mode & 0o170000 == 0o100000 {
            files.push((name, buf[data_at..data_at + size].to_vec()));
        }
        buf = &buf[(at + data_at + size).next_multiple_of(4) - at..];
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_files_reads_back_what_banger_image_writes() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("etc", 0o755).unwrap();
        w.file("etc/a", 0o644, b"odd").unwrap();
        w.symlink("etc/l", "a").unwrap();
        w.file("b.ko", 0o644, b"four").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(
            newc_files(&bytes),
            [
                ("etc/a".to_string(), b"odd".to_vec()),
                ("b.ko".to_string(), b"four".to_vec())
            ]
        );
    }
}
