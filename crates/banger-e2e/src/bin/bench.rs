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
//! ControlMaster warm. With `--workspace`, on a synthetic git repository of
//! about 5,000 files and 50 MB (made here, committed and packed like a fresh
//! clone): (i) `vm workspace prepare` into a Debian guest (user network),
//! (j) the same tree as `tar | ssh` into the same guest through a warm
//! ControlMaster, and (k) `vm run --rm -- true` inside that repository,
//! against (c) outside any. With `--reconcile N`: (l) `vm list` answering
//! after the daemon was killed (SIGKILL) with N recorded VMs, two of them
//! running (start-up, reconcile adopting two and checking the rest), against
//! (m) the same on an instance with no VM, the floor of a daemon start.
//! Usage: `bench [RUNS] [--ssh] [--workspace] [--reconcile N]`
//! (default 5 runs). Uses an isolated banger instance (its own daemon and
//! state) and the shared download cache.

use banger_core::engine::{Accel, Drive, DriveFormat, MachineSpec, qemu};
use banger_e2e::Env;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
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
        state_dir: scratch.to_owned(),
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

/// A small deterministic generator (xorshift64*): the same repository on
/// every run, with no dependency for it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The synthetic repository (i), (j) and (k) copy.
struct BigRepo {
    dir: PathBuf,
    /// Regular files under `dir`, .git included.
    files: usize,
    /// Their bytes.
    bytes: u64,
}

const TEXT_FILES: usize = 4_950;
const BLOBS: usize = 50;
const BLOB_BYTES: usize = 400 * 1024;

/// Runs git in `dir` with an identity, and no background gc that would
/// race the explicit one.
fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "-c",
            "gc.auto=0",
        ])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .expect("run git");
    assert!(st.success(), "git {args:?} in {}", dir.display());
}

/// How many regular files there are under `dir`, and their bytes.
fn files_and_bytes(dir: &Path) -> (usize, u64) {
    let sizes: Vec<u64> = banger_e2e::files_under(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .collect();
    (sizes.len(), sizes.iter().sum())
}

/// Makes a git repository at `dir`: 4,950 source-like text files of
/// 0.2-3 KB, three directories deep, and 50 files of 400 KiB of random
/// (incompressible) bytes; committed, then packed like a fresh clone.
fn make_repo(dir: &Path) -> BigRepo {
    const WORDS: [&str; 12] = [
        "fn", "let", "match", "self", "return", "impl", "struct", "Result", "=", "{", "}", ";",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for n in 0..TEXT_FILES {
        let sub = dir.join(format!("src/m{}/p{}/q{}", n % 10, n / 10 % 10, n / 100 % 5));
        std::fs::create_dir_all(&sub).unwrap();
        let len = 200 + rng.below(2_800) as usize;
        let mut text = String::with_capacity(len + 100);
        while text.len() < len {
            text.push_str("    ");
            for _ in 0..2 + rng.below(8) {
                // Keywords and identifiers, so it compresses like code.
                match rng.below(3) {
                    0 => text.push_str(&format!("v{}", rng.below(100_000))),
                    _ => text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]),
                }
                text.push(' ');
            }
            text.push('\n');
        }
        std::fs::write(sub.join(format!("f{n}.rs")), text).unwrap();
    }
    let blobs = dir.join("assets/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    for n in 0..BLOBS {
        let bytes: Vec<u8> = (0..BLOB_BYTES / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        std::fs::write(blobs.join(format!("b{n}.bin")), bytes).unwrap();
    }
    git(dir, &["init", "-q"]);
    git(dir, &["add", "."]);
    git(dir, &["commit", "-qm", "bench"]);
    git(dir, &["gc", "-q"]);
    let (files, bytes) = files_and_bytes(dir);
    BigRepo {
        dir: dir.to_owned(),
        files,
        bytes,
    }
}

/// Wall times in ms of (i) `vm workspace prepare` and (j) `tar | ssh` of
/// `repo` into one Debian guest (user network), alternating, `runs` each.
fn workspace_vs_tar_ssh(env: &Env, repo: &BigRepo, runs: usize) -> (Vec<f64>, Vec<f64>) {
    let name = "ws";
    env.ok(&[
        "vm",
        "create",
        "--name",
        name,
        "--image",
        "debian",
        "--network",
        "user",
    ]);
    // Opens the ControlMaster (j) then goes through, at the path `vm ssh` uses.
    env.ok(&["vm", "ssh", name, "--", "true"]);
    let config = env.root.path().join("ssh_config");
    std::fs::write(&config, env.ok(&["vm", "ssh-config", name])).unwrap();
    let control = env.runtime_dir().join("ssh").join(name);
    let tar_ssh = format!(
        "tar -C {} -cf - . | ssh -F {} -o ControlMaster=auto -o ControlPath={} -o ControlPersist=60 {name} \
         'rm -rf /root/t && mkdir /root/t && tar -C /root/t -xf -'",
        repo.dir.display(),
        config.display(),
        control.display(),
    );
    let from = repo.dir.to_string_lossy();
    let (mut i, mut j) = (Vec::new(), Vec::new());
    for r in 0..runs {
        eprintln!("bench: workspace run {}/{runs}", r + 1);
        i.push(timed(|| {
            env.ok(&["vm", "workspace", "prepare", name, "--from", &from]);
        }));
        j.push(timed(|| {
            let st = Command::new("sh").args(["-c", &tar_ssh]).status().unwrap();
            assert!(st.success(), "{tar_ssh}");
        }));
    }
    // Both copies hold the same tree: say so, for whoever reads the log.
    let count = "for d in /root/repo /root/t; do echo \"$d: $(find $d -type f | wc -l) files, $(du -sb $d | cut -f1) bytes\"; done";
    eprintln!(
        "bench: host: {} files, {} bytes; guest:\n{}",
        repo.files,
        repo.bytes,
        env.ok(&["vm", "exec", name, "--", "sh", "-c", count])
            .trim_end()
    );
    env.ok(&["vm", "delete", name]);
    (i, j)
}

/// Kills the env's daemon and waits until it is gone.
fn kill_daemon(env: &Env) {
    let Some(pid) = env.daemon_pid() else { return };
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let dead = banger_e2e::wait_until(Duration::from_secs(10), || !banger_e2e::process_alive(pid));
    assert!(dead, "the daemon {pid} outlived SIGKILL");
}

/// (l) and (m): see the module's doc. `env` has the minimal image.
fn reconcile_after_kill(env: &Env, n: usize, runs: usize) -> (Vec<f64>, Vec<f64>) {
    assert!(n >= 2, "--reconcile needs at least 2 vms");
    for i in 0..n {
        eprintln!("bench: recording vm {}/{n}", i + 1);
        let name = format!("rec-{i}");
        env.ok(&["vm", "create", "--name", &name, "--memory", "256"]);
        if i >= 2 {
            env.ok(&["vm", "stop", &name]);
        }
    }
    let empty = Env::new("network = \"none\"\n");
    empty.ok(&["vm", "list"]);
    let (mut l, mut m) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprintln!("bench: reconcile run {}/{runs}", i + 1);
        kill_daemon(env);
        let mut list = String::new();
        l.push(timed(|| list = env.ok(&["vm", "list", "--json"])));
        let vms: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
        let running = vms.iter().filter(|v| v["state"] == "running").count();
        assert_eq!(
            (vms.len(), running),
            (n, 2),
            "reconcile kept every vm as it was"
        );
        kill_daemon(&empty);
        m.push(timed(|| {
            empty.ok(&["vm", "list", "--json"]);
        }));
    }
    for i in 0..n {
        env.ok(&["vm", "delete", &format!("rec-{i}")]);
    }
    (l, m)
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
    let with_workspace = std::env::args().any(|a| a == "--workspace");
    let big = with_workspace.then(|| {
        eprintln!("bench: making the synthetic repository…");
        make_repo(&env.root.path().join("big"))
    });
    let mut k = Vec::new();
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
        if let Some(big) = &big {
            k.push(timed(|| {
                env.ok_in(&big.dir, &["vm", "run", "--rm", "--", "true"]);
            }));
        }
    }
    // SSH (debian image, user network: no privileges needed, loopback only).
    let with_ssh = std::env::args().any(|a| a == "--ssh");
    let (mut e, mut f, mut g) = (Vec::new(), Vec::new(), Vec::new());
    if with_ssh || with_workspace {
        eprintln!("bench: building the debian image…");
        env.ok(&["image", "build", "--preset", "debian"]);
    }
    if with_ssh {
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
    let reconcile_n: Option<usize> = std::env::args()
        .skip_while(|a| a != "--reconcile")
        .nth(1)
        .map(|n| n.parse().expect("--reconcile N: a number of vms"));
    let (l, m) = match reconcile_n {
        Some(n) => reconcile_after_kill(&env, n, runs),
        None => (Vec::new(), Vec::new()),
    };
    let (i, j) = match &big {
        Some(big) => workspace_vs_tar_ssh(&env, big, runs),
        None => (Vec::new(), Vec::new()),
    };
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
    if let Some(big) = &big {
        let (mi, mj, mk) = (median(i), median(j), median(k));
        let mb_per_s = |ms: f64| big.bytes as f64 / 1e6 / (ms / 1000.0);
        println!(
            "{:<48} {:>10.0}",
            format!(
                "(i) vm workspace prepare, {} files, {:.0} MB",
                big.files,
                big.bytes as f64 / 1e6
            ),
            mi
        );
        println!(
            "{:<48} {:>10.0}",
            "(j) tar | ssh, same tree, ControlMaster", mj
        );
        println!(
            "{:<48} {:>10.0}",
            "(k) vm run --rm -- true in that repository", mk
        );
        println!("{:<48} {:>10.1}", "(i) MB/s", mb_per_s(mi));
        println!("{:<48} {:>10.1}", "(j) MB/s", mb_per_s(mj));
        println!(
            "{:<48} {:>10.2}",
            "(i)/(j), below 1: banger is faster",
            mi / mj
        );
        println!("{:<48} {:>10.2}", "(k)/(c)", mk / mc);
    }
    if let Some(n) = reconcile_n {
        let (ml, mm) = (median(l), median(m));
        println!(
            "{:<48} {:>10.0}",
            format!("(l) daemon killed, {n} vms: vm list answers"),
            ml
        );
        println!(
            "{:<48} {:>10.0}",
            "(m) daemon killed, no vm: vm list answers", mm
        );
        println!("{:<48} {:>10.2}", "(l)/(m)", ml / mm);
    }
    println!("{:<48} {:>10.2}", "(b)/(a)", mb / ma);
    println!("{:<48} {:>10.2}", "(c)/(a)", mc / ma);
}
