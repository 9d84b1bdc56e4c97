//! `banger`, the command line of banger: parses the command, runs it against
//! the daemon (starting the daemon when needed), prints any error chain once
//! as `error: …` on stderr, and exits with the command's status (see
//! `exit.rs` for the codes). Errors can quote a guest (its console, its
//! agent): their control characters are always shown escaped
//! (`banger_api::text`), never sent to the terminal.

#![forbid(unsafe_code)]

mod cli;
mod client;
mod commands;
mod daemon;
mod exit;
mod output;
mod progress;
mod sse;
mod terminal;
mod units;

use banger_api::text::escape_text;
use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let failure = commands::failure_code(&cli.command);
    let ctx = commands::Context::from_env();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            std::process::exit(failure);
        }
    };
    let code = match runtime.block_on(commands::run(&ctx, cli.command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", escape_text(&format!("{err:#}")));
            exit::code_of(&err, failure)
        }
    };
    // Exit without dropping the runtime: a blocking read of stdin left over
    // from an exec session would otherwise hold the process open.
    std::process::exit(code);
}
