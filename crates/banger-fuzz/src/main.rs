//! `banger-fuzz`: runs the fuzz targets (`scripts/fuzz` is the way in).

use banger_fuzz::{Options, corpus_dir, engine, fuzz, load_corpus, targets};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Fuzz banger's decoders on stable Rust; exits 1 on the first crash.
#[derive(Parser)]
#[command(name = "banger-fuzz")]
struct Args {
    /// The target to run; every target when absent.
    target: Option<String>,
    /// Executions per target.
    #[arg(long, default_value_t = 1_000_000)]
    iterations: u64,
    /// Seed of the mutation loop (a run is reproducible from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run these input files once each instead of fuzzing (needs TARGET).
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
    /// List the targets.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for t in targets::all() {
            println!("{:<8} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<&targets::Target> = match &args.target {
        Some(name) => match targets::find(name) {
            Some(t) => vec![t],
            None => {
                let known: Vec<&str> = targets::all().iter().map(|t| t.name).collect();
                eprintln!("unknown target {name:?}: use {}", known.join(", "));
                return ExitCode::from(2);
            }
        },
        None => targets::all().iter().collect(),
    };
    if !args.replay.is_empty() {
        let [target] = chosen[..] else {
            eprintln!("--replay needs a TARGET");
            return ExitCode::from(2);
        };
        return replay(target, &args.replay);
    }
    let mut failed = false;
    for target in chosen {
        let dir = corpus_dir(target.name);
        let corpus = match load_corpus(&dir) {
            Ok(c) => c.into_iter().map(|(_, bytes)| bytes).collect::<Vec<_>>(),
            Err(e) => {
                eprintln!("cannot read the corpus {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        };
        let opts = Options {
            iterations: args.iterations,
            seed: args.seed,
            save_crashes: Some(dir),
        };
        let r = fuzz(target, &corpus, &opts);
        println!(
            "{:<8} {:>10} execs in {:>7.1}s  {:>9.0}/s  {:>5} outcomes  {:>5} in pool  {}",
            r.target,
            r.executions,
            r.elapsed.as_secs_f64(),
            r.per_second(),
            r.outcomes,
            r.pool,
            if r.crash.is_some() {
                "CRASH"
            } else {
                "no crash"
            }
        );
        if let Some(crash) = r.crash {
            failed = true;
            println!("  panic: {}", crash.message);
            match crash.saved {
                Some(p) => println!(
                    "  input saved as {} (replay: scripts/fuzz {} --replay {})",
                    p.display(),
                    r.target,
                    p.display()
                ),
                None => println!("  input: {:?}", crash.input),
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn replay(target: &targets::Target, files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for f in files {
        let input = match std::fs::read(f) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("cannot read {}: {e}", f.display());
                return ExitCode::FAILURE;
            }
        };
        match engine::run_one(target, &input) {
            Ok(outcome) => println!("{}: ok (outcome {outcome:#x})", f.display()),
            Err(message) => {
                failed = true;
                println!("{}: CRASH: {message}", f.display());
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
