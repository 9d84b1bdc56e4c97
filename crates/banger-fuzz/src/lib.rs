//! An in-tree fuzz harness that runs on stable Rust: for each decoder a
//! hostile peer can feed (API requests, the config file, agent frames,
//! archives, archive paths), a target that must never panic and checks the
//! decoder's invariants, and a coverage-free mutation loop that drives it.
//!
//! Why not `cargo-fuzz`: libFuzzer's coverage instrumentation needs a
//! nightly compiler (`-Z sanitizer`), and the issue asks for targets that
//! run on the stable toolchain the rest of the workspace builds with. The
//! loop here ([`engine`]) mutates bytes ([`mutate`]), builds structured
//! inputs with `arbitrary` ([`targets`]), and uses each target's outcome
//! in place of coverage to decide which inputs to keep mutating.
//!
//! Owns the targets, the loop and the corpus (`corpus/<target>/`); owns no
//! decoder (each lives in the crate that uses it).

pub mod engine;
pub mod mutate;
pub mod rng;
pub mod targets;

pub use engine::{Options, Report, fuzz, load_corpus};
pub use targets::Target;

use std::path::PathBuf;

// Counts allocations per thread, for the targets' memory bounds; only
// this crate's binary and tests link it.
#[global_allocator]
static ALLOC: banger_sys::alloc::Counting = banger_sys::alloc::Counting;

/// The target's seed corpus in the source tree.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Iterations per target in `cargo test`: a few seconds in all.
    const SHORT: u64 = 20_000;

    fn short_run(name: &str) {
        let target = targets::find(name).expect("a known target");
        let corpus: Vec<Vec<u8>> = load_corpus(&corpus_dir(name))
            .expect("the corpus reads")
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect();
        assert!(!corpus.is_empty(), "corpus/{name} has no seeds");
        let opts = Options {
            iterations: SHORT,
            seed: 0x5eed,
            save_crashes: None,
        };
        let report = fuzz(target, &corpus, &opts);
        if let Some(crash) = report.crash {
            panic!(
                "{name} crashed after {} executions: {}\ninput: {:?}",
                report.executions,
                crash.message,
                String::from_utf8_lossy(&crash.input)
            );
        }
        assert_eq!(report.executions, SHORT);
    }

    #[test]
    fn api_survives_a_short_run() {
        short_run("api");
    }

    #[test]
    fn config_survives_a_short_run() {
        short_run("config");
    }

    #[test]
    fn frame_survives_a_short_run() {
        short_run("frame");
    }

    #[test]
    fn archive_survives_a_short_run() {
        short_run("archive");
    }

    #[test]
    fn path_survives_a_short_run() {
        short_run("path");
    }

    #[test]
    fn every_target_has_a_corpus_directory() {
        for t in targets::all() {
            assert!(corpus_dir(t.name).is_dir(), "corpus/{} is missing", t.name);
        }
    }
}
