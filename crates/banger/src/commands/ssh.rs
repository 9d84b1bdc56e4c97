//! `banger vm ssh|ssh-config|proxy`: SSH with the system `ssh` client.
//! The daemon says where a VM's sshd is (its bridge address, a loopback
//! forward in user mode, or no route at all, in which case `ssh` tunnels
//! through the agent channel with `banger vm proxy` as its ProxyCommand).
//! Connections share one ControlMaster per VM, so repeated commands skip
//! the handshake.
//!
//! Every field the daemon sends that becomes an `ssh` argument or a line of
//! `~/.ssh/config` (user, host, key, VM and DNS names) is checked first
//! ([`check_target`]): a newline in a host name would add a config line of
//! the sender's choosing, such as a `ProxyCommand`.

use anyhow::Context as _;
use banger_api::{SshTarget, Vm};
use banger_sys::command::{Cmd, CommandError};
use std::path::Path;

use super::Context;
use crate::client::path_segment;

/// `vm ssh NAME [-- CMD...]`: replaces this process with `ssh`.
pub async fn ssh(ctx: &Context, args: crate::cli::SshArgs) -> anyhow::Result<i32> {
    banger_api::validate_vm_name(&args.name).map_err(anyhow::Error::msg)?;
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
    let mut argv = ssh_options(&target, &args.name, &control_dir, &exe)?;
    if args.command.is_empty() {
        argv.push("-t".into());
    }
    argv.push(format!("{}@{}", target.user, target.host));
    if !args.command.is_empty() {
        argv.push("--".into());
        argv.push(remote_command(&args.command));
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

/// The `ssh -o` options for a target, once its fields are checked.
pub fn ssh_options(
    t: &SshTarget,
    name: &str,
    control_dir: &Path,
    exe: &Path,
) -> Result<Vec<String>, UnsafeSshField> {
    check_target(name, t)?;
    let mut o: Vec<String> = vec!["-i".into(), t.key.clone(), "-p".into(), t.port.to_string()];
    let (known, alias) = pinned(name, t)?;
    for opt in [
        "IdentitiesOnly=yes",
        "PasswordAuthentication=no",
        // Each VM's own host key, pinned by banger over the agent channel.
        "StrictHostKeyChecking=yes",
        &format!("UserKnownHostsFile={known}"),
        &format!("HostKeyAlias={alias}"),
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
            shell_quote(&exe.display().to_string()),
            t.port
        ));
    }
    Ok(o)
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
        banger_api::validate_vm_name(&name).map_err(anyhow::Error::msg)?;
        let vm: Vm = client
            .get(&format!("/v1/vms/{}", path_segment(&name)))
            .await?;
        // A running VM's host key is pinned now, so `ssh NAME` can check it.
        let wait = vm.state == banger_api::VmState::Running;
        let target: SshTarget = client
            .get(&format!("/v1/vms/{}/ssh?wait={wait}", path_segment(&name)))
            .await?;
        out.push_str(&stanza(&vm, &target, &exe)?);
    }
    crate::output::print_str(&out);
    Ok(0)
}

/// The `~/.ssh/config` stanza of a VM, once every field in it is checked.
pub fn stanza(vm: &Vm, t: &SshTarget, exe: &Path) -> Result<String, UnsafeSshField> {
    check_target(&vm.name, t)?;
    if let Some(dns) = &vm.dns_name {
        check(&vm.name, "dns name", dns, host_problem)?;
    }
    let mut hosts = vec![vm.name.clone()];
    hosts.extend(vm.dns_name.clone());
    let mut s = format!("Host {}\n", hosts.join(" "));
    s.push_str(&format!(
        "  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n",
        t.host, t.port, t.user, t.key
    ));
    let (known, alias) = pinned(&vm.name, t)?;
    s.push_str(&format!(
        "  IdentitiesOnly yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile {known}\n  HostKeyAlias {alias}\n  LogLevel ERROR\n"
    ));
    if t.proxy {
        s.push_str(&format!(
            "  ProxyCommand {} vm proxy {} {}\n",
            shell_quote(&exe.display().to_string()),
            vm.name,
            t.port
        ));
    }
    s.push('\n');
    Ok(s)
}

/// The VM's pinned-key file and alias, checked like every other field.
fn pinned<'t>(vm: &str, t: &'t SshTarget) -> Result<(&'t str, &'t str), UnsafeSshField> {
    let known = t.known_hosts.as_deref().unwrap_or_default();
    let alias = t.host_key_alias.as_deref().unwrap_or_default();
    check(vm, "known hosts file", known, key_problem)?;
    check(vm, "host key alias", alias, |a| {
        let ok = a
            .strip_prefix("banger-")
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()));
        (!ok).then_some("an alias is banger-<vm id>")
    })?;
    Ok((known, alias))
}

/// A field of the daemon's answer that is not safe to hand to ssh.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing the daemon's ssh {field} {value:?} for vm {vm:?}: {problem}; a daemon that sends this is broken or not banger's"
)]
pub struct UnsafeSshField {
    pub vm: String,
    pub field: &'static str,
    pub value: String,
    pub problem: &'static str,
}

/// Checks every field of `t`, and the VM's name, that ends up in an ssh
/// argument or config line.
pub fn check_target(vm: &str, t: &SshTarget) -> Result<(), UnsafeSshField> {
    check(vm, "vm name", vm, |v| {
        banger_api::validate_vm_name(v)
            .err()
            .map(|_| "not a vm name")
    })?;
    check(vm, "user", &t.user, user_problem)?;
    check(vm, "host", &t.host, host_problem)?;
    check(vm, "key", &t.key, key_problem)?;
    check(vm, "port", &t.port.to_string(), |p| {
        (p == "0").then_some("not a port")
    })
}

fn check(
    vm: &str,
    field: &'static str,
    value: &str,
    problem: impl Fn(&str) -> Option<&'static str>,
) -> Result<(), UnsafeSshField> {
    match problem(value) {
        None => Ok(()),
        Some(problem) => Err(UnsafeSshField {
            vm: vm.to_string(),
            field,
            value: value.to_string(),
            problem,
        }),
    }
}

/// A user name as `useradd` takes it: `[a-z_][a-z0-9_-]*`, at most 32.
fn user_problem(user: &str) -> Option<&'static str> {
    let mut bytes = user.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
    (!(first_ok && rest_ok && user.len() <= 32))
        .then_some("a user name is [a-z_][a-z0-9_-]*, at most 32 characters")
}

/// An IP address, or a DNS name: dot-separated labels of letters, digits
/// and '-', none starting or ending with '-'.
fn host_problem(host: &str) -> Option<&'static str> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (!(host.len() <= 253 && host.split('.').all(label_ok)))
        .then_some("a host is an IP address or a DNS name")
}

/// An absolute path that ssh reads as written: no whitespace, control
/// characters, quotes, backslashes, or '%' (ssh expands `%` tokens).
fn key_problem(key: &str) -> Option<&'static str> {
    let plain =
        |c: char| !c.is_whitespace() && !c.is_control() && !matches!(c, '"' | '\'' | '\\' | '%');
    (!(key.starts_with('/') && key.chars().all(plain))).then_some(
        "a key is an absolute path without spaces, control characters, quotes, '\\' or '%'",
    )
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
    let ended = tokio::select! {
        r = down => r.map(drop),
        _ = async { let _ = up.await; std::future::pending::<()>().await } => Ok(()),
    };
    // ssh shows our stderr: its own words for this are a closed connection.
    if client.daemon_gone().await {
        anyhow::bail!(
            "the daemon stopped, and this connection to {name} with it (see `banger daemon status`)"
        );
    }
    ended?;
    Ok(0)
}

/// The command line the guest's shell runs for `words`: one word is a
/// command line already, as with `ssh host 'cd x && make'`; several are
/// an argv, each word quoted, so `vm ssh web -- ls 'a b'` lists one file.
fn remote_command(words: &[String]) -> String {
    match words {
        [line] => line.clone(),
        _ => words
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    }
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
            known_hosts: Some("/s/vms/ab12/known_hosts".into()),
            host_key_alias: Some("banger-ab12".into()),
        }
    }

    #[test]
    fn host_keys_are_checked_strictly_against_the_pinned_file() {
        let o = ssh_options(&target(false), "web", Path::new("/c"), Path::new("/b")).unwrap();
        for want in [
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=/s/vms/ab12/known_hosts",
            "HostKeyAlias=banger-ab12",
        ] {
            assert!(o.contains(&want.to_string()), "{want}: {o:?}");
        }
        assert!(!o.iter().any(|x| x.contains("StrictHostKeyChecking=no")));
        let bad = SshTarget {
            host_key_alias: Some("x\nHost *".into()),
            ..target(false)
        };
        assert!(ssh_options(&bad, "web", Path::new("/c"), Path::new("/b")).is_err());
        let bad = SshTarget {
            known_hosts: Some("/dev/null x".into()),
            ..target(false)
        };
        assert!(ssh_options(&bad, "web", Path::new("/c"), Path::new("/b")).is_err());
    }

    #[test]
    fn one_word_is_a_command_line_and_several_an_argv() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(remote_command(&words(&["cd /x && make"])), "cd /x && make");
        assert_eq!(remote_command(&words(&["ls", "a b"])), "ls 'a b'");
        assert_eq!(
            remote_command(&words(&["git", "--version"])),
            "git --version"
        );
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
        )
        .unwrap();
        assert!(o.windows(2).any(|w| w[0] == "-p" && w[1] == "2222"));
        assert!(o.contains(&"ControlPath=/run/b/ssh/web".to_string()));
        assert!(!o.iter().any(|x| x.starts_with("ProxyCommand")));
        let o = ssh_options(
            &target(true),
            "web",
            Path::new("/run/b/ssh"),
            Path::new("/bin/banger"),
        )
        .unwrap();
        assert!(o.contains(&"ProxyCommand=/bin/banger vm proxy web 2222".to_string()));
    }

    #[test]
    fn plain_targets_pass_the_checks() {
        for host in ["127.0.0.1", "172.30.0.5", "::1", "web.banger", "Host-1"] {
            let t = SshTarget {
                host: host.into(),
                ..target(false)
            };
            assert!(check_target("web", &t).is_ok(), "{host}");
        }
        let t = SshTarget {
            user: "_build-1".into(),
            key: "/home/ana/.local/state/banger/ssh/id_ed25519".into(),
            ..target(true)
        };
        assert!(check_target("web-1", &t).is_ok());
    }

    #[test]
    fn fields_that_could_inject_ssh_options_or_config_lines_are_refused() {
        let bad = [
            (
                "host",
                SshTarget {
                    host: "x\n  ProxyCommand evil".into(),
                    ..target(false)
                },
            ),
            (
                "host",
                SshTarget {
                    host: "-oProxyCommand=evil".into(),
                    ..target(false)
                },
            ),
            (
                "host",
                SshTarget {
                    host: "a b".into(),
                    ..target(false)
                },
            ),
            (
                "host",
                SshTarget {
                    host: String::new(),
                    ..target(false)
                },
            ),
            (
                "user",
                SshTarget {
                    user: "root\nHost *".into(),
                    ..target(false)
                },
            ),
            (
                "user",
                SshTarget {
                    user: "-oX".into(),
                    ..target(false)
                },
            ),
            (
                "key",
                SshTarget {
                    key: "/k\n  ProxyCommand evil".into(),
                    ..target(false)
                },
            ),
            (
                "key",
                SshTarget {
                    key: "k".into(),
                    ..target(false)
                },
            ),
            (
                "key",
                SshTarget {
                    key: "/a key".into(),
                    ..target(false)
                },
            ),
            (
                "key",
                SshTarget {
                    key: "/k/%d".into(),
                    ..target(false)
                },
            ),
            (
                "port",
                SshTarget {
                    port: 0,
                    ..target(false)
                },
            ),
        ];
        for (field, t) in bad {
            let err = check_target("web", &t).unwrap_err();
            assert_eq!(err.field, field, "{t:?}");
        }
        let err = check_target("web\n  ProxyCommand evil", &target(true)).unwrap_err();
        assert_eq!(err.field, "vm name");
    }

    #[test]
    fn a_stanza_refuses_an_injected_dns_name() {
        let vm: Vm = serde_json::from_value(vm_json("web", Some("web.banger\nHost *"))).unwrap();
        let err = stanza(&vm, &target(false), Path::new("/bin/banger")).unwrap_err();
        assert_eq!(err.field, "dns name");
    }

    #[test]
    fn a_stanza_names_the_vm_its_dns_name_and_the_proxy() {
        let vm: Vm = serde_json::from_value(vm_json("web", Some("web.banger"))).unwrap();
        let text = stanza(&vm, &target(true), Path::new("/opt/my tools/banger")).unwrap();
        assert!(
            text.starts_with("Host web web.banger\n  HostName 127.0.0.1\n"),
            "{text}"
        );
        assert!(
            text.contains("  ProxyCommand '/opt/my tools/banger' vm proxy web 2222\n"),
            "{text}"
        );
    }

    fn vm_json(name: &str, dns_name: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "id": "1", "name": name, "state": "running", "image": "debian", "cpus": 1,
            "memory_mib": 512, "disk_size_mib": 4096, "created_at": 0, "dir": "/s/vms/1",
            "dns_name": dns_name,
        })
    }

    #[tokio::test]
    async fn ssh_config_refuses_a_daemon_that_injects_a_config_line() {
        use crate::client::test_server::{json, serve};
        use hyper::StatusCode;
        let server = serve(|req| async move {
            let body = match req.uri().path() {
                "/v1/daemon" => serde_json::json!({
                    "pid": 42, "version": "0.1.0", "socket": "/s", "state_dir": "/d",
                    "started_at": 1, "vms_running": 1
                }),
                "/v1/vms/web" => vm_json("web", None),
                "/v1/vms/web/ssh" => serde_json::json!({
                    "user": "root", "host": "x\n  ProxyCommand evil", "port": 22,
                    "key": "/k/id", "proxy": false
                }),
                _ => return json(StatusCode::NOT_FOUND, serde_json::json!({})),
            };
            json(StatusCode::OK, body)
        });
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = context(dir.path(), std::sync::Arc::new(Recorder::default()));
        ctx.paths.runtime_dir = server.client.socket().parent().unwrap().to_path_buf();

        let err = ssh_config(&ctx, &["web".to_string()]).await.unwrap_err();

        assert_eq!(
            format!("{err:#}"),
            "refusing the daemon's ssh host \"x\\n  ProxyCommand evil\" for vm \"web\": \
             a host is an IP address or a DNS name; a daemon that sends this is broken or not banger's"
        );
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
