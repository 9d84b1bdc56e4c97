//! `--breakdown`: where the cold path's time goes, against the floor (a0).
//! `vm run --rm -- true` is create, exec and delete; each is run here on
//! its own, `runs` times, and split by what reports times:
//!
//! - the operation's stages and its total, as the daemon logs them
//!   (`bangerd.log`: `stage done target=VM stage=... ms=N`, `operation
//!   finished ... ms=N`); what the operation spent after its stages is the
//!   capabilities' `ready` hooks, and the wall time around it the CLI's;
//! - the guest's side: the agent's timed boot steps from the console log
//!   (`banger-agent: <step> (12 ms)`), among them the kernel's uptime when
//!   the agent began serving (`uptime at ready`: the rest of the host's wait
//!   for the agent is QEMU starting and loading the kernel, and the
//!   handshake);
//! - `vm exec -- true` (the first and the next) and the whole `vm run --rm -- true`.
//!
//! Done for the minimal image without network in the bench's instance, and
//! (as root) for the debian image on the bridge, in an instance inside a
//! network namespace of its own.

use super::floor::Bare;
use super::stats::timed;
use banger_e2e::Env;

/// Labelled samples in ms, in the order labels were first seen.
#[derive(Default)]
pub struct Samples(pub Vec<(String, Vec<f64>)>);

impl Samples {
    pub fn push(&mut self, label: &str, ms: f64) {
        match self.0.iter_mut().find(|(l, _)| l == label) {
            Some((_, v)) => v.push(ms),
            None => self.0.push((label.to_string(), vec![ms])),
        }
    }

    /// Operation `kind` on `vm`, which took `wall` ms at the CLI, split by
    /// what the daemon logged of it.
    fn split(&mut self, env: &Env, vm: &str, kind: &str, wall: f64) {
        let log = std::fs::read_to_string(env.state_dir().join("bangerd.log")).unwrap_or_default();
        let entries = logged(&log, vm);
        let Some(total) = entries.iter().rev().find(|(k, _)| k == kind).map(|e| e.1) else {
            eprintln!("bench: no {kind} of {vm} in the daemon's log");
            return;
        };
        let mut staged = 0.0;
        let prefix = format!("{kind}:");
        for (point, ms) in &entries {
            if let Some(stage) = point.strip_prefix(&prefix) {
                staged += ms;
                self.push(&format!("  {kind}: {stage}"), *ms);
            }
        }
        self.push(
            &format!("  {kind}: after its stages (ready hooks)"),
            total - staged,
        );
        self.push(
            &format!("  {kind}: CLI and daemon around the op"),
            wall - total,
        );
    }
}

/// The label of the whole `vm run --rm -- true`.
pub const RUN: &str = "vm run --rm -- true";

/// The label of the floor (a0) booted right before each cold run.
pub const FLOOR_ALONGSIDE: &str = "(a0) the floor, booted before each run";

/// The label of `vm run --rm -- true` timed back to back.
pub const BACK_TO_BACK: &str = "vm run --rm -- true, back to back";

/// `runs` runs of `env`'s default image, split (see the module doc): cold
/// boots, or once the image is warm (`standby`: its name) takes of its
/// standby, each timed once the standby is ready. With `floor`, the floor
/// (a0) boots right before each `vm run` ([`FLOOR_ALONGSIDE`]): this
/// host's speed drifts over a bench run, and a ratio to a floor measured
/// minutes before drifts with it. VMs are named `prefix-N`, so the
/// daemon's log lines of an earlier call are not counted again.
pub fn cold(
    env: &Env,
    runs: usize,
    prefix: &str,
    standby: Option<&str>,
    floor: Option<&Bare>,
) -> Samples {
    let mut s = Samples::default();
    let ready = || {
        if let Some(image) = standby
            && !env.standby_ready(image)
        {
            eprintln!("bench: no standby of {image} got ready");
        }
    };
    for r in 0..runs {
        eprintln!("bench: breakdown run {}/{runs}", r + 1);
        ready();
        if let Some(bare) = floor {
            s.push(FLOOR_ALONGSIDE, bare.floor());
        }
        // Every other run the whole `vm run` comes after the split one, so
        // neither is always the boot that follows the floor (in two 5-run
        // benches that one came out ~100 ms slower, whichever it was; the
        // noise here is ±300 ms a boot).
        let run_first = r % 2 == 0;
        let whole = |s: &mut Samples| {
            ready();
            let total = timed(|| {
                env.ok(&["vm", "run", "--rm", "--", "true"]);
            });
            s.push(RUN, total);
        };
        if run_first {
            whole(&mut s);
        }
        let name = format!("{prefix}-{r}");
        ready();
        let create = timed(|| {
            env.ok(&["vm", "create", "--name", &name]);
        });
        s.push("vm create", create);
        s.split(env, &name, "create", create);
        let logs = env.ok(&["vm", "logs", &name]);
        if r == 0 {
            eprintln!("bench: the console of {name}:\n{}", logs.trim_end());
        }
        for (step, ms) in agent_steps(&logs) {
            s.push(&format!("    agent: {}", same_every_run(&step, &name)), ms);
        }
        s.push(
            "vm exec -- true",
            timed(|| {
                env.ok(&["vm", "exec", &name, "--", "true"]);
            }),
        );
        // The next one: what every later command pays (its code translated
        // already, at the same addresses: see `tcg_aslr`).
        s.push(
            "vm exec -- true, again",
            timed(|| {
                env.ok(&["vm", "exec", &name, "--", "true"]);
            }),
        );
        let delete = timed(|| {
            env.ok(&["vm", "delete", &name]);
        });
        s.push("vm delete", delete);
        s.split(env, &name, "delete", delete);
        if !run_first {
            whole(&mut s);
        }
    }
    s
}

/// The stages (`create:agent`, ms) and operation totals (`create`, ms)
/// the daemon logged for operations on `vm`.
fn logged(log: &str, vm: &str) -> Vec<(String, f64)> {
    let target = format!(" target={vm} ");
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(|v| v.trim_matches('"').to_string())
    };
    log.lines()
        .filter(|l| l.contains(&target))
        .filter_map(|l| {
            let ms: f64 = field(l, "ms=")?.parse().ok()?;
            if l.contains(" stage done ") {
                Some((field(l, "point=")?, ms))
            } else if l.contains(" operation finished ") {
                Some((field(l, "kind=")?.to_lowercase(), ms))
            } else {
                None
            }
        })
        .collect()
}

/// The agent's timed steps in a console log: `banger-agent: <step> (<n> ms)`.
fn agent_steps(console: &str) -> Vec<(String, f64)> {
    console
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("banger-agent: ")?.strip_suffix(')')?;
            let (step, took) = l.rsplit_once(" (")?;
            Some((step.to_string(), duration_ms(took)?))
        })
        .collect()
}

/// A step's label without what differs between runs (the VM's name, its
/// MAC), so runs add up.
fn same_every_run(step: &str, vm: &str) -> String {
    let step = step.replace(vm, "NAME");
    if step.starts_with("identity: clock stepped") {
        return "identity: clock stepped".into();
    }
    match step.find(" MAC ") {
        Some(at) => format!("{} MAC", &step[..at]),
        None => step,
    }
}

/// `12 ms`, `3.4 ms`, `2.3 s` in ms.
fn duration_ms(text: &str) -> Option<f64> {
    let (n, unit) = text.trim().split_once(' ')?;
    let n: f64 = n.parse().ok()?;
    match unit {
        "ms" => Some(n),
        "s" => Some(n * 1000.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_stage_and_operation_lines_are_read_for_one_vm() {
        let log = "\
2026-12-02T10:59:15.778589Z  INFO banger_core::ops: stage done target=t1 stage=\"disks\" point=create:disks ms=28
2026-12-02T10:59:15.778589Z  INFO banger_core::ops: stage done target=t10 stage=\"disks\" point=create:disks ms=99
2026-12-02T10:59:17.962062Z  INFO banger_core::ops: stage done target=t1 stage=\"agent\" point=create:agent ms=2145
2026-12-02T10:59:18.044287Z  INFO banger_core::ops: operation finished op=op-a5 kind=Create target=t1 state=Succeeded ms=2294
";
        assert_eq!(
            logged(log, "t1"),
            [
                ("create:disks".to_string(), 28.0),
                ("create:agent".to_string(), 2145.0),
                ("create".to_string(), 2294.0)
            ]
        );
    }

    #[test]
    fn labels_lose_the_vm_name_and_mac() {
        assert_eq!(same_every_run("hostname bd-1", "bd-1"), "hostname NAME");
        assert_eq!(
            same_every_run("identity: clock stepped 2275 ms", "bw-1"),
            "identity: clock stepped"
        );
        assert_eq!(
            same_every_run("net: found the link with MAC 52:54:00:2d:45:9a", "bd-1"),
            "net: found the link with MAC"
        );
    }

    #[test]
    fn agent_steps_are_read_from_the_console() {
        let log = "[    0.1] noise\nbanger-agent: mounted the root (mount /newroot) (4.5 ms)\nbanger-agent: ready\n";
        assert_eq!(
            agent_steps(log),
            [("mounted the root (mount /newroot)".to_string(), 4.5)]
        );
    }
}
