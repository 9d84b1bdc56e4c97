//! The command line as clap derive structs. Parsing only: what each command
//! does lives in `commands/<verb>.rs`. Value parsers that turn user units into
//! API units (sizes, `KEY=VAL`) are the only logic here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::units::parse_size_mib;

/// Disposable and long-lived Linux microVMs.
#[derive(Debug, Parser)]
#[command(name = "banger", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, run and manage VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Build, register and manage images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Check that this host can run VMs.
    Doctor(DoctorArgs),
    /// Inspect or stop the banger daemon.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Print the address of the web page that shows VMs, images, sessions,
    /// snapshots and consoles (on 127.0.0.1, with its key; open it in a
    /// browser on this host).
    Web(JsonFlag),
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Run a command in a VM, creating the VM first unless --name names one.
    #[command(override_usage = "banger vm run [OPTIONS] -- <CMD>...")]
    Run(RunArgs),
    /// Create and boot a VM; prints its name.
    Create(VmSpec),
    /// Boot a stopped VM.
    Start(NameArg),
    /// Shut a VM down.
    Stop(NameArg),
    /// Stop and start a VM.
    Restart(NameArg),
    /// Snapshot a running VM: memory, devices and disks at one moment
    /// (prints the snapshot's name); `list` and `delete` its snapshots.
    #[command(
        override_usage = "banger vm snapshot <VM> [--name N] [--stop]\n       banger vm snapshot list <VM> [--json]\n       banger vm snapshot delete <VM> <SNAPSHOT>"
    )]
    Snapshot(SnapshotArgs),
    /// Put a VM back to a snapshot: processes, memory and files as they were.
    Restore(RestoreArgs),
    /// New running VMs, each a copy of a running VM as it is now (memory
    /// shared copy-on-write between them); prints their names.
    Fork(ForkArgs),
    /// Delete VMs and their disks.
    #[command(alias = "rm")]
    Delete(NamesArg),
    /// List VMs.
    #[command(alias = "ls")]
    List(JsonFlag),
    /// Show one VM.
    Show(ShowArgs),
    /// Run a command in a running VM.
    #[command(override_usage = "banger vm exec [OPTIONS] <NAME> -- <CMD>...")]
    Exec(ExecArgs),
    /// Print a VM's console log.
    Logs(LogsArgs),
    /// Open a shell (or run a command) over SSH with the system ssh client.
    #[command(override_usage = "banger vm ssh <NAME> [-- <CMD>...]")]
    Ssh(SshArgs),
    /// Print ~/.ssh/config stanzas for VMs (all when no name is given).
    SshConfig(SshConfigArgs),
    /// Tunnel stdin/stdout to a TCP port in the guest (an ssh ProxyCommand).
    #[command(hide = true)]
    Proxy(ProxyArgs),
    /// Copy a git checkout into a VM, and its commits back out.
    #[command(subcommand)]
    Workspace(WorkspaceCommand),
    /// Long-lived commands in a VM that outlive this client.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Copy files and directories between the host and a VM (VM:PATH).
    #[command(override_usage = "banger vm cp [-r] SRC DST   (one of them VM:PATH)")]
    Cp(CpArgs),
}

#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Copy the checkout around --from to /root/repo, a real git repository.
    Prepare(PrepareArgs),
    /// Bring the commits made in the guest back as a branch or a patch series.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    pub name: String,
    /// A directory inside the checkout (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// tracked: tracked and untracked-not-ignored files with uncommitted
    /// edits; full_copy: the whole tree, ignored files and submodules too.
    #[arg(long, default_value = "tracked", value_parser = parse_workspace_mode)]
    pub mode: banger_api::WorkspaceMode,
    /// Check out this commit instead of the work tree (tracked mode).
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// full_copy: leave out this name (anywhere) or relative path (repeatable).
    #[arg(long, value_name = "PATH")]
    pub exclude: Vec<String>,
    /// Where in the guest (default /root/repo).
    #[arg(long, value_name = "PATH")]
    pub guest_path: Option<String>,
    /// Only the last N commits of history (tracked mode; for huge repositories).
    #[arg(long, value_name = "N")]
    pub depth: Option<u32>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    pub name: String,
    /// Create this branch in the host checkout (never checked out).
    #[arg(long, conflicts_with = "patch", required_unless_present = "patch")]
    pub branch: Option<String>,
    /// Write the commits as a patch series to this file.
    #[arg(long, value_name = "FILE")]
    pub patch: Option<PathBuf>,
    /// Also take the guest's uncommitted changes, as a last commit.
    #[arg(long)]
    pub include_uncommitted: bool,
    #[arg(long, value_name = "PATH")]
    pub guest_path: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Start a command in the guest as a named session.
    #[command(override_usage = "banger vm session start <VM> --name <NAME> [OPTIONS] -- <CMD>...")]
    Start(SessionStartArgs),
    /// List a VM's sessions.
    #[command(alias = "ls")]
    List(SessionListArgs),
    /// Attach to a session: stdin in, output out; Ctrl-C detaches, the session keeps running.
    Attach(SessionArgs),
    /// Print a session's output from the start (scrollback), optionally following it.
    Logs(SessionLogsArgs),
    /// Stop a session: TERM, then KILL after a grace period.
    Stop(SessionArgs),
}

#[derive(Debug, Args)]
pub struct SessionStartArgs {
    pub vm: String,
    #[arg(long)]
    pub name: String,
    /// Working directory in the guest (default: /root).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Extra environment variable (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VAL", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SessionListArgs {
    pub vm: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    pub vm: String,
    pub session: String,
}

#[derive(Debug, Args)]
pub struct SessionLogsArgs {
    pub vm: String,
    pub session: String,
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Copy directories (recursively).
    #[arg(short, long)]
    pub recursive: bool,
    pub src: String,
    pub dst: String,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    pub name: String,
    /// Command to run instead of a login shell, after `--`: one word is a
    /// command line for the guest's shell (as with ssh: `-- 'cd repo && make'`),
    /// several are an argv, each word passed as it is.
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SshConfigArgs {
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    pub name: String,
    pub port: u16,
}

/// What a new VM looks like; every field falls back to the daemon's default.
#[derive(Debug, Clone, Default, Args)]
pub struct VmSpec {
    /// VM name (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Image to boot.
    #[arg(long)]
    pub image: Option<String>,
    /// Virtual CPUs.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory, in MiB or with a suffix (512M, 2G).
    #[arg(long, value_parser = parse_size_mib)]
    pub memory: Option<u64>,
    /// Size of the work disk at /root (4G, 512M, 8GiB; plain numbers are MiB).
    #[arg(long, value_parser = parse_size_mib)]
    pub disk_size: Option<u64>,
    /// Network: bridge (address, DNS name, NAT; needs root), user (QEMU NAT,
    /// loopback forwards; no privileges) or none.
    #[arg(long, value_parser = parse_network)]
    pub network: Option<banger_api::NetworkMode>,
    /// Forward 127.0.0.1:HOST to guest port GUEST (user network), e.g. 8080:80.
    #[arg(long, value_name = "HOST:GUEST", value_parser = parse_publish)]
    pub publish: Vec<String>,
    /// Bridge network: let the guest reach only these hosts (resolved at each
    /// boot) and --allow-cidr networks outside (repeatable).
    #[arg(long, value_name = "HOST")]
    pub allow_host: Vec<String>,
    /// Bridge network: let the guest reach only these networks outside (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub allow_cidr: Vec<String>,
    /// Let the guest reach the host's own services (off: only DNS on the bridge).
    #[arg(long)]
    pub host_access: bool,
    /// Start from VM/SNAPSHOT instead of booting: a new VM with that VM's
    /// resources, its processes, memory and files as the snapshot has them.
    #[arg(long, value_name = "VM/SNAPSHOT", conflicts_with = "cold")]
    pub from_snapshot: Option<String>,
    /// Boot, even when the image has a warm snapshot that fits (`image warm`).
    #[arg(long)]
    pub cold: bool,
    /// Show more of what the daemon did: whether the VM was restored from
    /// the image's warm snapshot or booted, and why.
    #[arg(short, long)]
    pub verbose: bool,
}

fn parse_publish(s: &str) -> Result<String, String> {
    banger_api::PortForward::parse(s).map(|_| s.to_string())
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub spec: VmSpec,
    /// Delete the VM when the command ends.
    #[arg(long)]
    pub rm: bool,
    /// Do not copy the git checkout around the current directory to /root/repo.
    #[arg(long)]
    pub no_checkout: bool,
    /// After the command, bring the guest's new commits back as this branch.
    #[arg(long, value_name = "BRANCH")]
    pub export: Option<String>,
    /// Run the command under a pseudo-terminal (needs a terminal on stdin).
    #[arg(short, long)]
    pub tty: bool,
    /// The command to run in the guest, after `--`.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// VM to run the command in.
    pub name: String,
    /// Run the command under a pseudo-terminal (needs a terminal on stdin).
    #[arg(short, long)]
    pub tty: bool,
    /// Extra environment variable (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VAL", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest (default: /root).
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The command to run in the guest, after `--`.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NameArg {
    pub name: String,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: Option<SnapshotCommand>,
    /// The VM to snapshot.
    pub vm: Option<String>,
    /// The snapshot's name (default: snap-N, the first free N).
    #[arg(long)]
    pub name: Option<String>,
    /// Stop the VM once the snapshot is taken.
    #[arg(long)]
    pub stop: bool,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List a VM's snapshots.
    #[command(alias = "ls")]
    List(ShowArgs),
    /// Delete one of a VM's snapshots.
    #[command(alias = "rm")]
    Delete(SnapshotRef),
}

#[derive(Debug, Args)]
pub struct SnapshotRef {
    pub vm: String,
    pub snapshot: String,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    pub vm: String,
    pub snapshot: String,
}

#[derive(Debug, Args)]
pub struct ForkArgs {
    pub vm: String,
    /// How many copies.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub count: u32,
    /// The copies are named PREFIX-1, PREFIX-2, … (default: VM-fork).
    #[arg(long)]
    pub prefix: Option<String>,
}

#[derive(Debug, Args)]
pub struct NamesArg {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Remove what banger left behind that no VM owns, and say what.
    #[arg(long)]
    pub fix: bool,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub name: String,
    /// Keep printing as the console writes.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image from a preset using the host's packages.
    Build(BuildArgs),
    /// Register a kernel and root filesystem you already have.
    Register(RegisterArgs),
    /// List images.
    #[command(alias = "ls")]
    List(JsonFlag),
    /// Show one image.
    Show(ShowArgs),
    /// Delete an image.
    #[command(alias = "rm")]
    Delete(NameArg),
    /// Boot the image once with the default resources and keep a snapshot
    /// of it at agent-ready: `vm create` and `vm run` asking for those
    /// resources then restore it instead of booting.
    Warm(WarmArgs),
}

#[derive(Debug, Args)]
pub struct WarmArgs {
    /// Image to warm.
    pub name: String,
    /// Remove the image's warm snapshot instead.
    #[arg(long)]
    pub remove: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Preset to build: minimal or debian [default: the one --name names,
    /// else minimal].
    #[arg(long, conflicts_with = "from_manifest")]
    pub preset: Option<String>,
    /// Build again the image a manifest describes (an image's
    /// manifest.json or its directory): same preset, suite, packages and
    /// kernel; reports every package whose version differs.
    #[arg(long, value_name = "FILE")]
    pub from_manifest: Option<PathBuf>,
    /// Debian suite for the debian preset (default: bookworm).
    #[arg(long, conflicts_with = "from_manifest")]
    pub suite: Option<String>,
    /// Image name (default: the preset's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Rebuild even if an image of that name exists.
    #[arg(long)]
    pub force: bool,
    /// Extra packages to install (the debian preset), comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "from_manifest")]
    pub packages: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[arg(long)]
    pub name: String,
    /// Kernel image (vmlinux or bzImage).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Root filesystem image (ext4).
    #[arg(long)]
    pub rootfs: PathBuf,
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// A /lib/modules/<version> tree holding the kernel's virtio modules.
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Say whether the daemon runs (exit 1 if not); never starts it.
    Status(JsonFlag),
    /// Ask the daemon to shut down and wait until it has.
    Stop,
}

fn parse_env(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!(
            "invalid environment variable {input:?}: use KEY=VALUE"
        )),
    }
}

/// `--mode`: a workspace mode, by name.
fn parse_workspace_mode(s: &str) -> Result<banger_api::WorkspaceMode, String> {
    s.parse()
        .map_err(|e: banger_api::UnknownWord| e.to_string())
}

/// `--network`: one of the network modes, by name.
fn parse_network(s: &str) -> Result<banger_api::NetworkMode, String> {
    s.parse()
        .map_err(|e: banger_api::UnknownWord| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("banger").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn vm_run_keeps_the_guest_command_verbatim() {
        let cli = parse(&[
            "vm", "run", "--rm", "--name", "x", "--", "sh", "-c", "exit 7",
        ])
        .unwrap();
        let Command::Vm(VmCommand::Run(run)) = cli.command else {
            panic!("not vm run")
        };
        assert!(run.rm);
        assert_eq!(run.spec.name.as_deref(), Some("x"));
        assert_eq!(run.command, ["sh", "-c", "exit 7"]);
    }

    #[test]
    fn flags_after_the_guest_command_belong_to_it() {
        let cli = parse(&["vm", "run", "--", "ls", "--rm", "-t", "--", "x"]).unwrap();
        let Command::Vm(VmCommand::Run(run)) = cli.command else {
            panic!("not vm run")
        };
        assert!(!run.rm && !run.tty);
        assert_eq!(run.command, ["ls", "--rm", "-t", "--", "x"]);
    }

    #[test]
    fn vm_run_needs_a_command() {
        let err = parse(&["vm", "run", "--rm"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn misspelt_flags_are_usage_errors_not_commands() {
        let err = parse(&["vm", "run", "--nmae", "x", "--", "true"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn sizes_are_parsed_into_mib() {
        let cli = parse(&["vm", "create", "--disk-size", "8GiB", "--memory", "512"]).unwrap();
        let Command::Vm(VmCommand::Create(spec)) = cli.command else {
            panic!("not vm create")
        };
        assert_eq!(spec.disk_size, Some(8192));
        assert_eq!(spec.memory, Some(512));
        let err = parse(&["vm", "create", "--disk-size", "12X"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid size \"12X\": use a number with M or G, e.g. 4G")
        );
    }

    #[test]
    fn exec_takes_env_workdir_and_tty() {
        let cli = parse(&[
            "vm", "exec", "web", "-t", "-e", "A=1=2", "-w", "/tmp", "--", "env",
        ])
        .unwrap();
        let Command::Vm(VmCommand::Exec(exec)) = cli.command else {
            panic!("not vm exec")
        };
        assert!(exec.tty);
        assert_eq!(exec.env, [("A".to_string(), "1=2".to_string())]);
        assert_eq!(exec.workdir.as_deref(), Some("/tmp"));
        assert_eq!(exec.command, ["env"]);
        assert!(parse(&["vm", "exec", "web", "-e", "NOEQUALS", "--", "env"]).is_err());
    }
}
