//! `banger vm ssh|ssh-config|proxy`: SSH with the system `ssh` client.
//! The daemon says where a VM's sshd is (its bridge address, a loopback
//! forward in user mode, or no route at all, in which case `ssh` tunnels
//! through the agent channel with `banger vm proxy` as its ProxyCommand).
//! Connections share one ControlMaster per VM, so repeated commands skip
//! the handshake.

use anyhow::Context as _;
use banger_api::{SshTarget, Vm};
use banger_sys::command::{Cmd, CommandError};
use std::path::Path;

use super::Context;
use crate::client::path_segment;

/// `vm ssh NAME [-- CMD...]`: replaces this process with `ssh`.
pub async fn ssh(ctx: &Context, args: crate::cli::SshArgs) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let control_dir = ctx.paths.runtime_dir.join("ssh");
    // A live ControlMaster means sshd answered already: skip the readiness wait.
    let warm = control_dir.join(&args.name).exists();
    let path = format!("/v1/vms/{}/ssh?wait={}", path_segment(&args.name), !warm);
    let target: SshTarget = client.get(&path).await?;
    std::fs::create_dir_all(&control_dir)
        .with_context(|| format!("cannot create {}", control_dir.display()))?;
    let exe =
        std::env::current_exe().context("cannot find the banger executable for ProxyCommand")?;
    let mut argv = ssh_options(&target, &args.name, &control_dir, &exe);
    if args.command.is_empty() {
        argv.push("-t".into());
    }
    argv.push(format!("{}@{}", target.user, target.host));
    if !args.command.is_empty() {
        argv.push("--".into());
        // ssh joins the remote command with spaces for the guest's shell: quote each word.
        argv.push(
            args.command
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    match ctx.spawner.exec(&Cmd::new("ssh").args(&argv)) {
        // The hint already says what to install.
        err @ CommandError::NotFound { .. } => anyhow::bail!("cannot run ssh: {err}"),
        CommandError::Spawn { source, .. } => {
            anyhow::bail!("cannot run ssh: {source} (install openssh-client)")
        }
        err => anyhow::bail!("cannot run ssh: {err}"),
    }
}

/// Ends the VM's ControlMaster, if any: it would outlive the guest it
/// connects to (stop, delete) and confuse the next `vm ssh` of that name.
pub fn close_master(ctx: &Context, name: &str) {
    let path = ctx.paths.runtime_dir.join("ssh").join(name);
    if path.exists() {
        let exit = Cmd::new("ssh")
            .args(["-O", "exit", "-o"])
            .arg(format!("ControlPath={}", path.display()))
            .arg(name);
        let _ = ctx.runner.run(&exit);
        let _ = std::fs::remove_file(&path);
    }
}

/// The `ssh -o` options for a target.
pub fn ssh_options(t: &SshTarget, name: &str, control_dir: &Path, exe: &Path) -> Vec<String> {
    let mut o: Vec<String> = vec!["-i".into(), t.key.clone(), "-p".into(), t.port.to_string()];
    for opt in [
        "IdentitiesOnly=yes",
        "PasswordAuthentication=no",
        // Every VM makes fresh host keys on first boot; its name is reused.
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
        "ControlMaster=auto",
        "ControlPersist=60",
    ] {
        o.push("-o".into());
        o.push(opt.into());
    }
    o.push("-o".into());
    // One master per VM, at a path the CLI can look for.
    o.push(format!("ControlPath={}/{name}", control_dir.display()));
    if t.proxy {
        o.push("-o".into());
        o.push(format!(
            "ProxyCommand={} vm proxy {name} {}",
            exe.display(),
            t.port
        ));
    }
    o
}

/// `vm ssh-config [NAME...]`: stanzas for `~/.ssh/config`.
pub async fn ssh_config(ctx: &Context, names: &[String]) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let names: Vec<String> = if names.is_empty() {
        let vms: Vec<Vm> = client.get("/v1/vms").await?;
        vms.into_iter().map(|v| v.name).collect()
    } else {
        names.to_vec()
    };
    let exe = std::env::current_exe().context("cannot find the banger executable")?;
    let mut out = String::new();
    for name in names {
        let vm: Vm = client
            .get(&format!("/v1/vms/{}", path_segment(&name)))
            .await?;
        let target: SshTarget = client
            .get(&format!("/v1/vms/{}/ssh", path_segment(&name)))
            .await?;
        out.push_str(&stanza(&vm, &target, &exe));
    }
    crate::output::print_str(&out);
    Ok(0)
}

pub fn stanza(vm: &Vm, t: &SshTarget, exe: &Path) -> String {
    let mut hosts = vec![vm.name.clone()];
    hosts.extend(vm.dns_name.clone());
    let mut s = format!("Host {}\n", hosts.join(" "));
    s.push_str(&format!(
        "  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n",
        t.host, t.port, t.user, t.key
    ));
    s.push_str("  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n");
    if t.proxy {
        s.push_str(&format!(
            "  ProxyCommand {} vm proxy {} {}\n",
            exe.display(),
            vm.name,
            t.port
        ));
    }
    s.push('\n');
    s
}

/// `vm proxy NAME PORT`: stdin/stdout ⇄ guest TCP port, until either side ends.
pub async fn proxy(ctx: &Context, name: &str, port: u16) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let io = client.connect(name, port).await?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let up = async {
        let mut stdin = tokio::io::stdin();
        let r = tokio::io::copy(&mut stdin, &mut wr).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
        r
    };
    let down = async {
        let mut stdout = tokio::io::stdout();
        let r = tokio::io::copy(&mut rd, &mut stdout).await;
        let _ = tokio::io::AsyncWriteExt::flush(&mut stdout).await;
        r
    };
    // The guest side ending is the end of the session.
    tokio::select! {
        r = down => { r?; }
        _ = async { let _ = up.await; std::future::pending::<()>().await } => {}
    }
    Ok(0)
}

/// Single-quotes a word for a POSIX shell unless it is plainly safe.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(proxy: bool) -> SshTarget {
        SshTarget {
            user: "root".into(),
            host: "127.0.0.1".into(),
            port: 2222,
            key: "/k/id".into(),
            proxy,
        }
    }

    #[test]
    fn words_are_quoted_for_the_guest_shell() {
        assert_eq!(shell_quote("git"), "git");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn options_reuse_a_control_master_and_proxy_when_unroutable() {
        let o = ssh_options(
            &target(false),
            "web",
            Path::new("/run/b/ssh"),
            Path::new("/bin/banger"),
        );
        assert!(o.windows(2).any(|w| w[0] == "-p" && w[1] == "2222"));
        assert!(o.contains(&"ControlPath=/run/b/ssh/web".to_string()));
        assert!(!o.iter().any(|x| x.starts_with("ProxyCommand")));
        let o = ssh_options(
            &target(true),
            "web",
            Path::new("/run/b/ssh"),
            Path::new("/bin/banger"),
        );
        assert!(o.contains(&"ProxyCommand=/bin/banger vm proxy web 2222".to_string()));
    }

    /// Records each command's rendering; every run succeeds.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    impl banger_sys::command::Runner for Recorder {
        fn run(&self, cmd: &Cmd) -> Result<banger_sys::command::Output, CommandError> {
            self.0.lock().unwrap().push(cmd.to_string());
            Ok(Default::default())
        }
    }

    fn context(dir: &Path, runner: std::sync::Arc<Recorder>) -> Context {
        Context {
            paths: crate::daemon::tests::paths_in(dir),
            runner,
            spawner: std::sync::Arc::new(banger_sys::spawn::RecordingSpawner::missing()),
        }
    }

    #[test]
    fn a_live_control_master_is_told_to_exit_and_its_socket_removed() {
        let dir = tempfile::tempdir().unwrap();
        let runner = std::sync::Arc::new(Recorder::default());
        let ctx = context(dir.path(), runner.clone());
        let master = ctx.paths.runtime_dir.join("ssh/web");
        std::fs::create_dir_all(master.parent().unwrap()).unwrap();
        std::fs::write(&master, "").unwrap();
        close_master(&ctx, "web");
        let expected = format!("ssh -O exit -o ControlPath={} web", master.display());
        assert_eq!(*runner.0.lock().unwrap(), vec![expected]);
        assert!(!master.exists());
        close_master(&ctx, "web");
        assert_eq!(runner.0.lock().unwrap().len(), 1, "no master, no ssh");
    }
}
