//! `--snapshots` (on unless other sections were asked for alone):
//!
//! - (i) `vm run --rm -- true` from a warm image (`image warm minimal`, in
//!   an instance of its own, so no other figure restores from it), each
//!   run once the image's standby is ready (as after any pause between two
//!   commands), and (i') the same runs back to back, each one waiting for
//!   the standby the one before began;
//! - (j) `vm restore` of a 512 MiB VM to agent-ready, and (j2) `vm create
//!   --from-snapshot` of it;
//! - (k) `vm fork` of a freshly booted 512 MiB VM, one fork and four at
//!   once, and the PSS of the four forks together against that VM's own
//!   PSS (one cold-booted VM, measured in the same run before any fork);
//! - (l) `vm snapshot` of that running VM: its total time, the pause the
//!   engine reports (the snapshot's manifest, `paused_ms`), and the largest
//!   gap between lines a guest loop prints every millisecond as a host
//!   reader receives them, against the largest gap just before.
//!
//! Every VM made here is deleted before it returns.

use super::stats::timed;
use banger_e2e::Env;
use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The resources (i) to (l) use: banger's default memory.
const MEMORY: &str = "512";

/// (i): each run with the standby ready; (i'): back to back.
pub type Warm = (Vec<f64>, Vec<f64>);

#[derive(Default)]
pub struct Figures {
    /// (i) and (i'), or why they could not be taken.
    pub warm: Option<Result<Warm, String>>,
    pub restore: Vec<f64>,
    pub from_snapshot: Vec<f64>,
    pub fork1: Vec<f64>,
    pub fork4: Vec<f64>,
    /// MB: the four forks' PSS together, and the VM they came from before
    /// its first fork.
    pub forks4_pss: Vec<f64>,
    pub cold_pss: Vec<f64>,
    pub snapshot: Vec<f64>,
    pub paused_engine: Vec<f64>,
    pub gap_during: Vec<f64>,
    pub gap_before: Vec<f64>,
}

pub fn measure(env: &Env, runs: usize) -> Figures {
    let mut f = Figures::default();
    restore(env, runs, &mut f);
    for r in 0..runs {
        eprintln!("bench: fork and snapshot run {}/{runs}", r + 1);
        fork_and_snapshot(env, &format!("src-{r}"), &mut f);
    }
    f.warm = Some(warm(runs));
    f
}

/// (i) and (i'): a fresh instance, the minimal image warmed, then `vm run`
/// in it.
fn warm(runs: usize) -> Result<Warm, String> {
    let env = Env::new("default_image = \"minimal\"\nnetwork = \"none\"\n");
    env.ok(&["image", "build", "--preset", "minimal"]);
    let out = env.run(&["image", "warm", "minimal"]);
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "image warm not available ({})",
            why.lines().next().unwrap_or("").trim()
        ));
    }
    let run = || {
        timed(|| {
            env.ok(&["vm", "run", "--rm", "--", "true"]);
        })
    };
    let ready = (0..runs)
        .map(|_| {
            if !env.standby_ready("minimal") {
                eprintln!("bench: no standby of minimal got ready");
            }
            run()
        })
        .collect();
    Ok((ready, (0..runs).map(|_| run()).collect()))
}

/// (j): one VM, one snapshot, restored `runs` times and created from
/// `runs` times.
fn restore(env: &Env, runs: usize, f: &mut Figures) {
    env.ok(&["vm", "create", "--name", "rs", "--memory", MEMORY]);
    env.ok(&["vm", "snapshot", "rs", "--name", "s"]);
    for r in 0..runs {
        eprintln!("bench: restore run {}/{runs}", r + 1);
        f.restore.push(timed(|| {
            env.ok(&["vm", "restore", "rs", "s"]);
        }));
        f.from_snapshot.push(timed(|| {
            env.ok(&[
                "vm",
                "create",
                "--name",
                "rs-copy",
                "--from-snapshot",
                "rs/s",
            ]);
        }));
        env.ok(&["vm", "delete", "rs-copy"]);
    }
    env.ok(&["vm", "delete", "rs"]);
}

/// (k) and (l) on one freshly booted VM `vm`, deleted at the end.
fn fork_and_snapshot(env: &Env, vm: &str, f: &mut Figures) {
    env.ok(&["vm", "create", "--name", vm, "--memory", MEMORY]);
    f.cold_pss
        .push(pss_mb(&[banger_e2e::pss_kib(env.vm_pid(vm))]));

    let (total, during, before) = snapshot_with_reader(env, vm);
    f.snapshot.push(total);
    f.gap_during.push(during);
    f.gap_before.push(before);
    f.paused_engine.push(paused_ms(env, vm, "l"));
    env.ok(&["vm", "snapshot", "delete", vm, "l"]);

    let mut forks = String::new();
    f.fork1.push(timed(|| {
        forks = env.ok(&["vm", "fork", vm, "--count", "1", "--prefix", "k1"]);
    }));
    delete_all(env, &forks);
    f.fork4.push(timed(|| {
        forks = env.ok(&["vm", "fork", vm, "--count", "4", "--prefix", "k4"]);
    }));
    let pss: Vec<u64> = forks
        .lines()
        .map(|n| banger_e2e::pss_kib(env.vm_pid(n.trim())))
        .collect();
    assert_eq!(pss.len(), 4, "vm fork --count 4 printed {forks:?}");
    f.forks4_pss.push(pss_mb(&pss));
    delete_all(env, &forks);
    env.ok(&["vm", "delete", vm]);
}

fn pss_mb(kib: &[u64]) -> f64 {
    kib.iter().sum::<u64>() as f64 * 1024.0 / 1e6
}

fn delete_all(env: &Env, names: &str) {
    let mut args = vec!["vm", "delete"];
    args.extend(names.lines().map(str::trim).filter(|n| !n.is_empty()));
    env.ok(&args);
}

/// The guest loop (l) reads: a line about every millisecond until
/// /tmp/stop-reader exists.
const READER_LOOP: &str =
    "rm -f /tmp/stop-reader; while [ ! -e /tmp/stop-reader ]; do echo .; usleep 1000; done";

/// Takes snapshot `l` of `vm` while a guest loop prints to a host reader.
/// Returns the snapshot's wall time, the largest gap between the reader's
/// arrivals that overlaps it, and the largest in the second before it
/// (what the loop and the exec stream do without a pause), all in ms.
fn snapshot_with_reader(env: &Env, vm: &str) -> (f64, f64, f64) {
    let mut child = env
        .cmd(&["vm", "exec", vm, "--", "sh", "-c", READER_LOOP])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vm exec");
    let arrivals = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let reader = {
        let arrivals = arrivals.clone();
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(1..) = out.read(&mut buf) {
                arrivals.lock().unwrap().push(Instant::now());
            }
        })
    };
    let flowing = banger_e2e::wait_until(Duration::from_secs(20), || {
        arrivals.lock().unwrap().len() > 50
    });
    assert!(flowing, "the guest loop of (l) prints nothing");
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    env.ok(&["vm", "snapshot", vm, "--name", "l"]);
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    env.ok(&["vm", "exec", vm, "--", "touch", "/tmp/stop-reader"]);
    let _ = child.wait();
    reader.join().unwrap();
    let arrivals = arrivals.lock().unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let gaps = arrivals.windows(2).map(|w| (w[0], w[1]));
    let during = gaps
        .clone()
        .filter(|(a, b)| *b >= t0 && *a <= t1)
        .map(|(a, b)| ms(b - a))
        .fold(0.0, f64::max);
    let before = gaps
        .filter(|(a, b)| *a >= t0 - Duration::from_secs(1) && *b <= t0)
        .map(|(a, b)| ms(b - a))
        .fold(0.0, f64::max);
    (ms(t1 - t0), during, before)
}

/// The pause the engine measured for snapshot `snap` of `vm`, from the
/// snapshot's manifest.
fn paused_ms(env: &Env, vm: &str, snap: &str) -> f64 {
    let id = env.json(&["vm", "show", vm, "--json"])["id"]
        .as_str()
        .expect("vm id")
        .to_string();
    let path = env
        .state_dir()
        .join("vms")
        .join(id)
        .join("snapshots")
        .join(snap)
        .join("manifest.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["paused_ms"].as_f64().expect("paused_ms")
}
