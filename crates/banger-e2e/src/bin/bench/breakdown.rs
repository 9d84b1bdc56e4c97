//! `--breakdown`: where the cold path's time goes, against the floor (a0).
//! `vm run --rm -- true` is create, exec and delete; each is run here on
//! its own, `runs` times, and split by what reports times:
//!
//! - the operation's stages, as the CLI prints them (`wait for agent ...
//!   ok (2.3 s)`), for create and delete;
//! - the guest's side: the agent's timed boot steps from the console log
//!   (`banger-agent: <step> (12 ms)`), and the guest kernel's uptime when
//!   the first exec ran (`/proc/uptime`: how long since the kernel started,
//!   so the rest of the agent wait is QEMU start-up and kernel loading);
//! - `vm exec -- true` and the whole `vm run --rm -- true`.
//!
//! Done for the minimal image without network in the bench's instance, and
//! (as root) for the debian image on the bridge, in an instance inside a
//! network namespace of its own.

use super::stats::timed;
use banger_e2e::Env;

/// Labelled samples in ms, in the order labels were first seen.
#[derive(Default)]
pub struct Samples(pub Vec<(String, Vec<f64>)>);

impl Samples {
    fn push(&mut self, label: &str, ms: f64) {
        match self.0.iter_mut().find(|(l, _)| l == label) {
            Some((_, v)) => v.push(ms),
            None => self.0.push((label.to_string(), vec![ms])),
        }
    }
}

/// `runs` cold runs of `env`'s default image, split (see the module doc).
pub fn cold(env: &Env, runs: usize) -> Samples {
    let mut s = Samples::default();
    for r in 0..runs {
        eprintln!("bench: breakdown run {}/{runs}", r + 1);
        let total = timed(|| {
            env.ok(&["vm", "run", "--rm", "--", "true"]);
        });
        s.push("vm run --rm -- true", total);
        let name = format!("bd-{r}");
        let mut out = None;
        let create = timed(|| out = Some(env.run(&["vm", "create", "--name", &name])));
        let out = out.unwrap();
        assert!(out.status.success(), "vm create {name}");
        s.push("vm create", create);
        let mut staged = 0.0;
        for (stage, ms) in stages(&String::from_utf8_lossy(&out.stderr)) {
            staged += ms;
            s.push(&format!("  create: {stage}"), ms);
        }
        s.push("  create: outside stages (CLI, daemon)", create - staged);
        let uptime = env.ok(&["vm", "exec", &name, "--", "cat", "/proc/uptime"]);
        let up: f64 = uptime
            .split_whitespace()
            .next()
            .and_then(|u| u.parse().ok())
            .expect("/proc/uptime");
        s.push("  guest uptime at the first exec", up * 1000.0);
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
        let mut out = None;
        let delete = timed(|| out = Some(env.run(&["vm", "delete", &name])));
        let out = out.unwrap();
        assert!(out.status.success(), "vm delete {name}");
        s.push("vm delete", delete);
        for (stage, ms) in stages(&String::from_utf8_lossy(&out.stderr)) {
            s.push(&format!("  delete: {stage}"), ms);
        }
    }
    s
}

/// The timed stages the CLI prints: `  <stage> ... ok (<n> ms|s)`.
fn stages(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .filter_map(|l| {
            let (stage, rest) = l.trim().split_once(" ... ok (")?;
            Some((stage.to_string(), duration_ms(rest.split(')').next()?)?))
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
    fn stage_lines_are_read_with_their_unit() {
        let err = "  prepare disks ... ok (28 ms)\n  wait for agent ... ok (2.3 s)\nvm x running (2.5 s)\n";
        assert_eq!(
            stages(err),
            [
                ("prepare disks".to_string(), 28.0),
                ("wait for agent".to_string(), 2300.0)
            ]
        );
    }

    #[test]
    fn labels_lose_the_vm_name_and_mac() {
        assert_eq!(same_every_run("hostname bd-1", "bd-1"), "hostname NAME");
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
