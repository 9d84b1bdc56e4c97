//! `bench`: measures, in one run on this host,
//!
//! (a) a bare `qemu-system-x86_64` boot of an image's kernel, initramfs and
//!     rootfs (the same command line banger uses, no daemon) until the agent
//!     answers the channel handshake;
//! (b) `banger vm create` until it returns (agent ready);
//! (c) `banger vm run --rm -- true` end to end;
//! (d) `banger vm exec NAME -- true` on a running VM;
//!
//! each over several runs, and prints medians and the ratios (b)/(a) and
//! (c)/(a). With `--ssh` also (e) create of a Debian guest (user network)
//! until `vm ssh` answers, (f) `vm ssh NAME -- true` cold and (g) with the
//! ControlMaster warm. Usage: `bench [RUNS] [--ssh]` (default 5 runs). Uses an isolated banger
//! instance (its own daemon and state) and the shared download cache.

use banger_core::engine::{Accel, Drive, DriveFormat, MachineSpec, qemu};
use banger_e2e::Env;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn timed(f: impl FnOnce()) -> f64 {
    let t0 = Instant::now();
    f();
    t0.elapsed().as_secs_f64() * 1000.0
}

/// One bare QEMU boot to the agent's first answer, in ms.
fn bare_boot(image: &Path, scratch: &Path, accel: Accel) -> f64 {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    let run = |args: &[&str]| {
        assert!(
            Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap()
                .success(),
            "{args:?}"
        )
    };
    let overlay = scratch.join("root.qcow2");
    let work = scratch.join("work.ext4");
    let config = scratch.join("config.img");
    run(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        &image.join("rootfs.ext4").to_string_lossy(),
        &overlay.to_string_lossy(),
    ]);
    std::fs::copy(image.join("work-seed.ext4"), &work).unwrap();
    let cfg = banger_proto::GuestConfig {
        version: 1,
        vm_name: "bare".into(),
        hostname: "bare".into(),
        authorized_keys: vec![],
        network: None,
    };
    std::fs::write(&config, cfg.to_drive().unwrap()).unwrap();
    let spec = MachineSpec {
        vm_id: "bench".into(),
        name: "bare".into(),
        cpus: 1,
        memory_mib: 512,
        kernel: image.join("vmlinux"),
        initrd: Some(image.join("initrd.img")),
        cmdline_extra: String::new(),
        drives: vec![
            Drive {
                path: overlay,
                format: DriveFormat::Qcow2,
                serial: banger_proto::ROOT_DRIVE_SERIAL,
                read_only: false,
            },
            Drive {
                path: work,
                format: DriveFormat::Raw,
                serial: banger_proto::WORK_DRIVE_SERIAL,
                read_only: false,
            },
            Drive {
                path: config,
                format: DriveFormat::Raw,
                serial: banger_proto::CONFIG_DRIVE_SERIAL,
                read_only: true,
            },
        ],
        nics: vec![],
        console_log: scratch.join("console.log"),
        engine_log: scratch.join("engine.log"),
        run_dir: scratch.to_owned(),
        accel,
        tsc_khz: banger_sys::process::tsc_khz(),
    };
    let t0 = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(qemu::argv(&spec))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = qemu::agent_socket(scratch);
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

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    if let Some(why) = banger_e2e::missing_prerequisite() {
        eprintln!("bench: cannot run: {why}");
        std::process::exit(1);
    }
    let env = Env::new("default_image = \"minimal\"\nnetwork = \"none\"\n");
    eprintln!("bench: building the minimal image in an isolated instance…");
    env.ok(&["image", "build", "--preset", "minimal"]);
    let image = env.state_dir().join("images/minimal");
    // The accelerator banger chose (doctor runs the probe and caches it).
    let report = env.json(&["doctor", "--json"]);
    let kvm_pass = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "kvm" && c["status"] == "pass");
    let accel = if kvm_pass { Accel::Kvm } else { Accel::Tcg };
    let scratch = env.root.path().join("bare");

    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut c = Vec::new();
    let mut d = Vec::new();
    let mut h = Vec::new();
    // The headline case: `vm run` in a git checkout (this repository's),
    // which is copied to /root/repo first.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for i in 0..runs {
        eprintln!("bench: run {}/{runs}", i + 1);
        a.push(bare_boot(&image, &scratch, accel));
        let name = format!("bench-{i}");
        b.push(timed(|| {
            env.ok(&["vm", "create", "--name", &name]);
        }));
        for _ in 0..3 {
            d.push(timed(|| {
                env.ok(&["vm", "exec", &name, "--", "true"]);
            }));
        }
        env.ok(&["vm", "delete", &name]);
        c.push(timed(|| {
            env.ok(&["vm", "run", "--rm", "--", "true"]);
        }));
        h.push(timed(|| {
            env.ok_in(&repo, &["vm", "run", "--rm", "--", "true"]);
        }));
    }
    // SSH (debian image, user network: no privileges needed, loopback only).
    let with_ssh = std::env::args().any(|a| a == "--ssh");
    let (mut e, mut f, mut g) = (Vec::new(), Vec::new(), Vec::new());
    if with_ssh {
        eprintln!("bench: building the debian image…");
        env.ok(&["image", "build", "--preset", "debian"]);
        let control = env.runtime_dir().join("ssh");
        for i in 0..runs {
            eprintln!("bench: ssh run {}/{runs}", i + 1);
            let name = format!("ssh-{i}");
            e.push(timed(|| {
                env.ok(&[
                    "vm",
                    "create",
                    "--name",
                    &name,
                    "--image",
                    "debian",
                    "--network",
                    "user",
                ]);
                env.ok(&["vm", "ssh", &name, "--", "true"]);
            }));
            for _ in 0..3 {
                // Cold: no ControlMaster left from the previous call.
                let _ = std::process::Command::new("ssh")
                    .args(["-O", "exit", "-o"])
                    .arg(format!("ControlPath={}", control.join(&name).display()))
                    .arg(&name)
                    .output();
                let _ = std::fs::remove_file(control.join(&name));
                f.push(timed(|| {
                    env.ok(&["vm", "ssh", &name, "--", "true"]);
                }));
                g.push(timed(|| {
                    env.ok(&["vm", "ssh", &name, "--", "true"]);
                }));
            }
            env.ok(&["vm", "delete", &name]);
        }
    }
    let (ma, mb, mc, md) = (median(a), median(b), median(c), median(d));
    println!(
        "banger bench: {runs} runs, accel {}, {} cpus",
        accel.as_str(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("{:<48} {:>10}", "measurement", "median ms");
    println!(
        "{:<48} {:>10.0}",
        "(a) bare qemu boot to agent's first byte", ma
    );
    println!("{:<48} {:>10.0}", "(b) banger vm create to agent ready", mb);
    println!("{:<48} {:>10.0}", "(c) banger vm run --rm -- true", mc);
    println!("{:<48} {:>10.0}", "(d) banger vm exec NAME -- true", md);
    let files = Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .current_dir(&repo)
        .output()
        .map(|o| {
            o.stdout
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count()
        })
        .unwrap_or(0);
    println!(
        "{:<48} {:>10.0}",
        format!("(h) vm run --rm -- true in a checkout ({files} files)"),
        median(h)
    );
    if with_ssh {
        println!(
            "{:<48} {:>10.0}",
            "(e) create (debian, user net) to ssh ready",
            median(e)
        );
        println!(
            "{:<48} {:>10.0}",
            "(f) vm ssh NAME -- true, cold",
            median(f)
        );
        println!(
            "{:<48} {:>10.0}",
            "(g) vm ssh NAME -- true, ControlMaster",
            median(g)
        );
    }
    println!("{:<48} {:>10.2}", "(b)/(a)", mb / ma);
    println!("{:<48} {:>10.2}", "(c)/(a)", mc / ma);
}
