//! What each command does, one module per command group; argument structs
//! are in `cli.rs`. Every command gets a [`Context`], talks to the daemon
//! through `client.rs` and returns its exit status; errors go back to `main`,
//! which prints them once.

pub mod checkout;
pub mod cp;
pub mod daemon_cmd;
pub mod doctor;
pub mod exec;
pub mod image;
pub mod session;
pub mod snapshot;
pub mod ssh;
pub mod vm;
pub mod vm_run;
pub mod web;
pub mod workspace;

use std::path::PathBuf;
use std::sync::Arc;

use banger_api::paths::Paths;
use banger_sys::command::{Runner, SystemRunner};
use banger_sys::spawn::{Spawner, SystemSpawner};

use crate::cli::{Command, ImageCommand, SessionCommand, VmCommand, WorkspaceCommand};
use crate::client::Client;
use crate::exit;

/// What every command needs: where the daemon's files are, and how to run
/// the host programs some commands use (`git`, `tar`, `ssh`, `bangerd`),
/// so tests can substitute them.
pub struct Context {
    pub paths: Paths,
    pub runner: Arc<dyn Runner>,
    pub spawner: Arc<dyn Spawner>,
}

impl Context {
    pub fn from_env() -> Context {
        let uid = rustix::process::getuid().as_raw();
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(if uid == 0 { "/root" } else { "/" }));
        Context {
            paths: Paths::resolve(|k| std::env::var(k).ok(), &home, uid),
            runner: Arc::new(SystemRunner),
            spawner: Arc::new(SystemSpawner),
        }
    }

    /// A client on a running daemon, started if need be.
    pub async fn client(&self) -> anyhow::Result<Client> {
        crate::daemon::connect(&self.paths, self.spawner.as_ref()).await
    }
}

pub async fn run(ctx: &Context, command: Command) -> anyhow::Result<i32> {
    match command {
        Command::Vm(cmd) => match cmd {
            VmCommand::Run(args) => vm_run::run(ctx, args).await,
            VmCommand::Create(spec) => vm::create(ctx, spec).await,
            VmCommand::Start(arg) => vm::lifecycle(ctx, vm::Action::Start, &arg.name).await,
            VmCommand::Stop(arg) => vm::lifecycle(ctx, vm::Action::Stop, &arg.name).await,
            VmCommand::Restart(arg) => vm::lifecycle(ctx, vm::Action::Restart, &arg.name).await,
            VmCommand::Snapshot(args) => snapshot::run(ctx, args).await,
            VmCommand::Restore(args) => snapshot::restore(ctx, &args.vm, &args.snapshot).await,
            VmCommand::Fork(args) => snapshot::fork(ctx, args).await,
            VmCommand::Delete(args) => vm::delete(ctx, &args.names).await,
            VmCommand::List(flag) => vm::list(ctx, flag.json).await,
            VmCommand::Show(args) => vm::show(ctx, &args.name, args.json).await,
            VmCommand::Exec(args) => exec::run(ctx, args).await,
            VmCommand::Logs(args) => vm::logs(ctx, &args.name, args.follow).await,
            VmCommand::Ssh(args) => ssh::ssh(ctx, args).await,
            VmCommand::SshConfig(args) => ssh::ssh_config(ctx, &args.names).await,
            VmCommand::Proxy(args) => ssh::proxy(ctx, &args.name, args.port).await,
            VmCommand::Workspace(cmd) => match cmd {
                WorkspaceCommand::Prepare(args) => workspace::prepare(ctx, args).await,
                WorkspaceCommand::Export(args) => workspace::export(ctx, args).await,
            },
            VmCommand::Session(cmd) => match cmd {
                SessionCommand::Start(args) => session::start(ctx, args).await,
                SessionCommand::List(args) => session::list(ctx, args).await,
                SessionCommand::Attach(args) => session::attach(ctx, args).await,
                SessionCommand::Logs(args) => session::logs(ctx, args).await,
                SessionCommand::Stop(args) => session::stop(ctx, args).await,
            },
            VmCommand::Cp(args) => cp::run(ctx, args).await,
        },
        Command::Image(cmd) => match cmd {
            ImageCommand::Build(args) => image::build(ctx, args).await,
            ImageCommand::Register(args) => image::register(ctx, args).await,
            ImageCommand::List(flag) => image::list(ctx, flag.json).await,
            ImageCommand::Show(args) => image::show(ctx, &args.name, args.json).await,
            ImageCommand::Delete(arg) => image::delete(ctx, &arg.name).await,
            ImageCommand::Warm(args) => image::warm(ctx, &args.name, args.remove).await,
        },
        Command::Doctor(args) => doctor::run(ctx, args.json, args.fix).await,
        Command::Daemon(cmd) => daemon_cmd::run(ctx, cmd).await,
        Command::Web(flag) => web::run(ctx, flag.json).await,
    }
}

/// The status a failing command exits with: commands that pass a guest
/// command's status through keep 1-124 free for it.
pub fn failure_code(command: &Command) -> i32 {
    match command {
        Command::Vm(VmCommand::Run(_) | VmCommand::Exec(_)) => exit::GUEST_RUNNER_FAILURE,
        _ => exit::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn code(args: &[&str]) -> i32 {
        failure_code(&Cli::try_parse_from(args).unwrap().command)
    }

    #[test]
    fn run_and_exec_fail_with_125_others_with_1() {
        assert_eq!(code(&["banger", "vm", "run", "--", "true"]), 125);
        assert_eq!(code(&["banger", "vm", "exec", "web", "--", "true"]), 125);
        assert_eq!(code(&["banger", "vm", "list"]), 1);
        assert_eq!(code(&["banger", "doctor"]), 1);
    }
}
