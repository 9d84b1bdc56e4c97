//! The fuzzing loop: coverage-free, on stable Rust, one thread.
//!
//! How a run goes:
//!
//! 1. The pool starts as the target's corpus (`corpus/<target>/*`), or one
//!    empty input when the directory is empty.
//! 2. Each execution takes an input: usually a pool entry put through
//!    stacked byte mutations ([`crate::mutate`]), sometimes fresh random
//!    bytes. The target decodes it, checks its invariants, and panics when
//!    one breaks.
//! 3. Instead of coverage, a target returns an *outcome*: a small number
//!    naming how far the input got (which error, how many entries). An
//!    input with an outcome not seen before joins the pool, so later
//!    inputs start from it: a cheap stand-in for coverage feedback that
//!    lets mutations reach past the first check of a format.
//! 4. A panic is caught, the input written to the save directory (when
//!    given) as `crash-<fnv1a>`, and the run stops with the crash reported.

use crate::mutate;
use crate::rng::{Rng, fnv1a};
use crate::targets::Target;
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Inputs kept for mutation beyond the corpus; the oldest are not evicted,
/// a random one is replaced.
const POOL_CAP: usize = 4096;

#[derive(Debug, Clone)]
pub struct Options {
    pub iterations: u64,
    pub seed: u64,
    /// Where crashing inputs are written; `None` keeps them in the report only.
    pub save_crashes: Option<PathBuf>,
}

#[derive(Debug)]
pub struct Report {
    pub target: &'static str,
    pub executions: u64,
    pub elapsed: Duration,
    /// Distinct outcomes seen (the feedback signal).
    pub outcomes: usize,
    /// Inputs in the pool at the end (corpus plus inputs with new outcomes).
    pub pool: usize,
    pub crash: Option<Crash>,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.executions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug)]
pub struct Crash {
    pub input: Vec<u8>,
    pub message: String,
    /// Where the input was written, if it was.
    pub saved: Option<PathBuf>,
}

/// Runs one input, turning a panic into its message.
pub fn run_one(target: &Target, input: &[u8]) -> Result<u64, String> {
    catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-string payload".into())
    })
}

/// Fuzzes `target` from the inputs in `corpus` for `opts.iterations` executions.
pub fn fuzz(target: &Target, corpus: &[Vec<u8>], opts: &Options) -> Report {
    let mut rng = Rng::new(opts.seed ^ fnv1a(target.name.as_bytes()));
    let mut pool: Vec<Vec<u8>> = if corpus.is_empty() {
        vec![Vec::new()]
    } else {
        corpus.to_vec()
    };
    let mut seen = HashSet::new();
    let started = Instant::now();
    let mut crash = None;
    let mut executions = 0;
    // The corpus itself runs first: a regression seed must still pass.
    let mut queue: Vec<Vec<u8>> = pool.clone();
    while executions < opts.iterations {
        let input = queue.pop().unwrap_or_else(|| {
            if rng.one_in(16) {
                mutate::random(&mut rng, target.max_len)
            } else {
                let base = rng.pick(&pool);
                mutate::mutate(&mut rng, base, &pool, target.dictionary, target.max_len)
            }
        });
        executions += 1;
        match run_one(target, &input) {
            Ok(outcome) => {
                if seen.insert(outcome) {
                    if pool.len() < POOL_CAP {
                        pool.push(input);
                    } else {
                        let at = rng.below(pool.len());
                        pool[at] = input;
                    }
                }
            }
            Err(message) => {
                let saved = opts
                    .save_crashes
                    .as_deref()
                    .and_then(|dir| save(dir, &input));
                crash = Some(Crash {
                    input,
                    message,
                    saved,
                });
                break;
            }
        }
    }
    Report {
        target: target.name,
        executions,
        elapsed: started.elapsed(),
        outcomes: seen.len(),
        pool: pool.len(),
        crash,
    }
}

/// Reads every file of a corpus directory (sorted by name); a missing
/// directory is an empty corpus.
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.is_file());
    paths.sort();
    paths
        .into_iter()
        .map(|p| std::fs::read(&p).map(|bytes| (p, bytes)))
        .collect()
}

fn save(dir: &Path, input: &[u8]) -> Option<PathBuf> {
    let path = dir.join(format!("crash-{:016x}", fnv1a(input)));
    std::fs::create_dir_all(dir).ok()?;
    std::fs::write(&path, input).ok()?;
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picky(input: &[u8]) -> u64 {
        // Panics only on inputs that start "BUG": reachable by mutation
        // from the seed "BUF" with feedback on the prefix length matched.
        let matched = input.iter().zip(b"BUG").take_while(|(a, b)| a == b).count();
        assert!(matched < 3, "found the bug");
        matched as u64
    }

    #[test]
    fn a_planted_bug_is_found_and_reported_with_its_input() {
        let target = Target {
            name: "planted",
            about: "test",
            run: picky,
            max_len: 16,
            dictionary: &[],
        };
        let opts = Options {
            iterations: 1_000_000,
            seed: 1,
            save_crashes: None,
        };
        let report = fuzz(&target, &[b"BUF".to_vec()], &opts);
        let crash = report.crash.expect("the planted bug is found");
        assert!(crash.input.starts_with(b"BUG"));
        assert!(crash.message.contains("found the bug"));
    }

    #[test]
    fn a_clean_target_runs_every_iteration() {
        let target = Target {
            name: "clean",
            about: "test",
            run: |i| i.len() as u64 % 4,
            max_len: 16,
            dictionary: &[],
        };
        let opts = Options {
            iterations: 500,
            seed: 1,
            save_crashes: None,
        };
        let report = fuzz(&target, &[], &opts);
        assert!(report.crash.is_none());
        assert_eq!(report.executions, 500);
    }
}
