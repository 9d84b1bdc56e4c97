//! `bench`: measures, in one run on this host, each figure the median of
//! several runs and printed with its ratio to the floor (a0) of the same
//! run:
//!
//! (a0) the floor: a bare `qemu-system-x86_64` boot of the image's kernel on
//!      banger's command line, with a busybox initramfs that loads only the
//!      virtio-blk modules, waits for the root disk and powers off
//!      (`floor.rs`);
//! (a)  the same bare QEMU with the image's own initramfs and rootfs, until
//!      the agent answers the channel handshake;
//! (b)  `banger vm create` until it returns (agent ready);
//! (c)  `banger vm run --rm -- true` end to end;
//! (d)  `banger vm exec NAME -- true` on a running VM;
//! (h)  (c) inside this repository's checkout (copied to /root/repo first).
//!
//! `--snapshots` (also on when no other section is asked for):
//! (i) `vm run --rm -- true` from a warm image, (j) `vm restore` of a
//! 512 MiB VM to agent-ready (and `vm create --from-snapshot`), (k) `vm
//! fork` of a running VM, one and four at once, with the four forks' PSS
//! against one cold-booted VM's, (l) `vm snapshot` of a running VM: total
//! time and the pause the guest saw (`snapshots.rs`).
//!
//! `--breakdown`: (c) split into stages, the agent's boot steps and the
//! guest's uptime, for the minimal image without network and, as root, for
//! the debian image on the bridge, cold and then warm (`image warm
//! debian`), whose `vm run --rm -- true` is (i2) (`breakdown.rs`), and
//! (i2") the same run the moment `image warm debian` returns. Each
//! cold `vm run` there follows a floor boot, and its ratio to those floors
//! is printed too.
//!
//! `--ssh`: (e) create of a Debian guest (user network) until `vm ssh`
//! answers, (f) `vm ssh NAME -- true` cold and (g) with the ControlMaster
//! warm. `--workspace` (`repo.rs`): (w1) `vm workspace prepare` of a
//! synthetic 5,000-file, 50 MB repository into a Debian guest, (w2) the
//! same tree as `tar | ssh` through a warm ControlMaster, (w3) `vm run --rm
//! -- true` inside it. `--reconcile N` (`reconcile.rs`): (r1) `vm list`
//! answering after the daemon was killed with N recorded VMs, two running,
//! against (r2) the same with no VM.
//!
//! Usage: `bench [RUNS] [--snapshots] [--breakdown] [--ssh] [--workspace]
//! [--reconcile N]` (default 5 runs). Uses isolated banger instances (their
//! own daemons and state) and the shared download cache.

mod breakdown;
mod floor;
mod reconcile;
mod repo;
mod snapshots;
mod stats;

use banger_core::engine::Accel;
use banger_e2e::Env;
use stats::{Report, median, timed};
use std::path::Path;
use std::process::Command;

/// The breakdown's label for the whole `vm run --rm -- true`.
const RUN: &str = breakdown::RUN;
/// Its label when timed back to back.
const BACK_TO_BACK: &str = breakdown::BACK_TO_BACK;
/// Its label when run the moment `image warm` returns.
const AFTER_WARM: &str = "vm run --rm -- true, right after image warm";

/// What the command line asks for.
struct Args {
    runs: usize,
    ssh: bool,
    workspace: bool,
    reconcile: Option<usize>,
    snapshots: bool,
    breakdown: bool,
}

impl Args {
    fn parse() -> Args {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let has = |f: &str| args.iter().any(|a| a == f);
        let reconcile = args
            .iter()
            .skip_while(|a| *a != "--reconcile")
            .nth(1)
            .map(|n| n.parse().expect("--reconcile N: a number of vms"));
        let (ssh, workspace, breakdown) = (has("--ssh"), has("--workspace"), has("--breakdown"));
        let alone = !(ssh || workspace || breakdown || reconcile.is_some());
        Args {
            runs: args.first().and_then(|a| a.parse().ok()).unwrap_or(5),
            ssh,
            workspace,
            reconcile,
            snapshots: has("--snapshots") || alone,
            breakdown,
        }
    }
}

fn main() {
    let args = Args::parse();
    let runs = args.runs;
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
    let bare = floor::Bare::new(&image, &env.root.path().join("bare"), accel);
    eprintln!("bench: the floor loads {}", bare.modules.join(", "));

    let (mut a0, mut a, mut b, mut c, mut d, mut h) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    // The headline case: `vm run` in a git checkout (this repository's),
    // which is copied to /root/repo first.
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let big = args.workspace.then(|| {
        eprintln!("bench: making the synthetic repository…");
        repo::make_repo(&env.root.path().join("big"))
    });
    let mut w3 = Vec::new();
    for i in 0..runs {
        eprintln!("bench: run {}/{runs}", i + 1);
        a0.push(bare.floor());
        a.push(bare.agent());
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
            env.ok_in(&checkout, &["vm", "run", "--rm", "--", "true"]);
        }));
        if let Some(big) = &big {
            w3.push(timed(|| {
                env.ok_in(&big.dir, &["vm", "run", "--rm", "--", "true"]);
            }));
        }
    }
    let snaps = args.snapshots.then(|| snapshots::measure(&env, runs));
    let cold = args
        .breakdown
        .then(|| breakdown::cold(&env, runs, "bd", None, Some(&bare)));
    if args.ssh || args.workspace || args.breakdown {
        eprintln!("bench: building the debian image…");
        env.ok(&["image", "build", "--preset", "debian"]);
    }
    let debian_cold = args.breakdown.then(|| debian_on_bridge(&env, runs, &bare));
    let ssh = args.ssh.then(|| ssh_figures(&env, runs));
    let reconciled = args
        .reconcile
        .map(|n| reconcile::reconcile_after_kill(&env, n, runs));
    let copied = big
        .as_ref()
        .map(|big| repo::workspace_vs_tar_ssh(&env, big, runs));

    let mut r = Report::new(median(a0.clone()));
    println!(
        "banger bench: {runs} runs, accel {}, {} cpus",
        accel.as_str(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    r.ms("(a0) bare qemu, busybox initramfs: disk, power-off", a0);
    let ma = r.ms("(a) bare qemu boot to agent's first byte", a);
    let mb = r.ms("(b) banger vm create to agent ready", b);
    let mc = r.ms("(c) banger vm run --rm -- true", c);
    r.ms("(d) banger vm exec NAME -- true", d);
    let files = Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .current_dir(&checkout)
        .output()
        .map(|o| {
            o.stdout
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count()
        })
        .unwrap_or(0);
    r.ms(
        format!("(h) vm run --rm -- true in a checkout ({files} files)"),
        h,
    );
    r.ratio("(b)/(a)", mb / ma);
    r.ratio("(c)/(a)", mc / ma);
    if let Some(f) = snaps {
        snapshots_rows(&mut r, f);
    }
    if let Some(s) = cold {
        r.heading("breakdown: minimal image, no network");
        cold_rows(&mut r, s);
    }
    match debian_cold {
        Some(Ok((cold, warm))) => {
            r.heading("breakdown: debian image, bridge network");
            cold_rows(&mut r, cold);
            r.heading("breakdown: debian image, bridge network, warm image");
            for (label, v) in warm.0 {
                let label = match label.as_str() {
                    RUN => format!("(i2) {RUN}, warm debian on the bridge, standby ready"),
                    BACK_TO_BACK => format!("(i2') {RUN}, the same, back to back"),
                    AFTER_WARM => format!("(i2\") image warm debian && {RUN}: the run"),
                    _ => label,
                };
                r.ms(label, v);
            }
        }
        Some(Err(why)) => r.skipped("breakdown: debian image, bridge network", why),
        None => {}
    }
    if let Some((e, f, g)) = ssh {
        r.ms("(e) create (debian, user net) to ssh ready", e);
        r.ms("(f) vm ssh NAME -- true, cold", f);
        r.ms("(g) vm ssh NAME -- true, ControlMaster", g);
    }
    if let (Some(big), Some((w1, w2))) = (&big, copied) {
        let mb_per_s = |ms: f64| big.bytes as f64 / 1e6 / (ms / 1000.0);
        let label = format!(
            "(w1) vm workspace prepare, {} files, {:.0} MB",
            big.files,
            big.bytes as f64 / 1e6
        );
        let mw1 = r.ms(label, w1);
        let mw2 = r.ms("(w2) tar | ssh, same tree, ControlMaster", w2);
        let mw3 = r.ms("(w3) vm run --rm -- true in that repository", w3);
        r.rate("(w1) MB/s", mb_per_s(mw1));
        r.rate("(w2) MB/s", mb_per_s(mw2));
        r.ratio("(w1)/(w2), below 1: banger is faster", mw1 / mw2);
        r.ratio("(w3)/(c)", mw3 / mc);
    }
    if let (Some(n), Some((r1, r2))) = (args.reconcile, reconciled) {
        let m1 = r.ms(format!("(r1) daemon killed, {n} vms: vm list answers"), r1);
        let m2 = r.ms("(r2) daemon killed, no vm: vm list answers", r2);
        r.ratio("(r1)/(r2)", m1 / m2);
    }
    r.print();
}

/// A cold breakdown's rows, and its `vm run` against the floor booted
/// alongside it.
fn cold_rows(r: &mut Report, s: breakdown::Samples) {
    let (mut run, mut floor) = (None, None);
    for (label, v) in s.0 {
        let m = r.ms(label.as_str(), v);
        match label.as_str() {
            RUN => run = Some(m),
            breakdown::FLOOR_ALONGSIDE => floor = Some(m),
            _ => {}
        }
    }
    if let (Some(run), Some(floor)) = (run, floor) {
        r.ratio(format!("{RUN} / (a0) booted alongside"), run / floor);
    }
}

fn snapshots_rows(r: &mut Report, f: snapshots::Figures) {
    r.heading("snapshots (512 MiB guests)");
    match f.warm {
        Some(Ok((ready, back_to_back))) => {
            r.ms("(i) vm run --rm -- true, warm image, standby ready", ready);
            r.ms("(i') the same, back to back", back_to_back);
        }
        Some(Err(why)) => r.skipped("(i) vm run --rm -- true, warm image", why),
        None => {}
    }
    r.ms("(j) vm restore to agent ready", f.restore);
    r.ms(
        "(j2) vm create --from-snapshot to agent ready",
        f.from_snapshot,
    );
    r.ms("(k) vm fork --count 1", f.fork1);
    r.ms("(k4) vm fork --count 4, all four", f.fork4.clone());
    r.ms(
        "(k4) ... per fork (all four / 4)",
        f.fork4.iter().map(|x| x / 4.0).collect(),
    );
    let pss4 = r.mb("(k) PSS of the four forks together", f.forks4_pss);
    let cold = r.mb(
        "(k) PSS of one cold-booted vm (the forks' source)",
        f.cold_pss,
    );
    r.ratio("(k) four forks / one cold vm (PSS)", pss4 / cold);
    r.ratio(
        "(k) four forks / (4 x one cold vm) (PSS)",
        pss4 / (4.0 * cold),
    );
    r.ms("(l) vm snapshot of a running vm, total", f.snapshot);
    r.ms("(l) guest paused, as the engine measured", f.paused_engine);
    r.ms("(l) largest gap a host reader saw, during", f.gap_during);
    r.ms(
        "(l) largest gap a host reader saw, the second before",
        f.gap_before,
    );
}

/// `--breakdown` for the debian image on the bridge, in an instance inside
/// a network namespace of its own (needs root), with `host`'s debian image
/// registered there (the namespace has no way out to a mirror).
/// Then the same from the warm image (`image warm debian`): (i2).
fn debian_on_bridge(
    host: &Env,
    runs: usize,
    bare: &floor::Bare,
) -> Result<(breakdown::Samples, breakdown::Samples), String> {
    if banger_sys::process::euid() != 0 {
        return Err("needs root (the bridge network)".into());
    }
    let env = Env::in_netns("default_image = \"debian\"\nnetwork = \"bridge\"\n");
    env.register_from(host, "debian");
    let cold = breakdown::cold(&env, runs, "bd", None, Some(bare));
    // The issue's own words, `image warm debian && vm run --rm -- true`:
    // the run timed as it follows each warm.
    let mut after_warm = Vec::new();
    for r in 0..runs {
        eprintln!("bench: warming the debian image ({}/{runs})…", r + 1);
        env.ok(&["image", "warm", "debian"]);
        after_warm.push(timed(|| {
            env.ok(&["vm", "run", "--rm", "--", "true"]);
        }));
    }
    let mut warm = breakdown::cold(&env, runs, "bw", Some("debian"), None);
    for t in after_warm {
        warm.push(AFTER_WARM, t);
    }
    for _ in 0..runs {
        let t = timed(|| {
            env.ok(&["vm", "run", "--rm", "--", "true"]);
        });
        warm.push(BACK_TO_BACK, t);
    }
    Ok((cold, warm))
}

/// (e), (f), (g): see the module's doc. `env` has the debian image.
fn ssh_figures(env: &Env, runs: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut e, mut f, mut g) = (Vec::new(), Vec::new(), Vec::new());
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
            let _ = Command::new("ssh")
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
    (e, f, g)
}
