//! Who can reach a user's banger, end to end through the real CLI and
//! daemon: a runtime directory another user made first is refused before
//! anything is sent to it; a daemon started under umask 000 still keeps
//! its directories 0700 and its socket, store and log 0600, and closes a
//! connection from another uid (root here, whom file modes do not stop);
//! a fake daemon cannot put lines into `vm ssh-config`'s output. No VM
//! boots. Needs root to make the accounts (the last test does not).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use banger_e2e::{Env, User, skip, skip_unless_root_with, unprivileged_user};

/// A second plain account, playing the other local user.
fn other_user() -> User {
    const NAME: &str = "banger-e2e-other";
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, NAME]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let st = Command::new("useradd")
            .args(["--user-group", "--shell", "/bin/sh", NAME])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .status()
            .expect("run useradd");
        assert!(st.success(), "useradd {NAME} failed");
    }
    User {
        uid: id("-u").expect("uid"),
        gid: id("-g").expect("gid"),
    }
}

/// A fake daemon on `socket`: answers `GET /v1/daemon` like bangerd, the
/// paths in `answers` with their JSON, and counts its connections.
/// `POST /v1/daemon/shutdown` removes the socket and ends it.
struct FakeDaemon {
    connections: Arc<AtomicUsize>,
}

impl FakeDaemon {
    fn serve(socket: &Path, answers: Vec<(&'static str, String)>) -> FakeDaemon {
        let listener = UnixListener::bind(socket).expect("bind the fake daemon's socket");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let socket = socket.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                counted.fetch_add(1, Ordering::SeqCst);
                let path = request_path(&stream);
                let body = match path.as_str() {
                    "/v1/daemon" => r#"{"pid":1,"version":"0.1.0","socket":"/s","state_dir":"/d","started_at":1,"vms_running":0}"#.to_string(),
                    "/v1/daemon/shutdown" => "null".to_string(),
                    p => answers
                        .iter()
                        .find(|(a, _)| *a == p)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_else(|| "[]".to_string()),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                if path == "/v1/daemon/shutdown" {
                    let _ = std::fs::remove_file(&socket);
                    break;
                }
            }
        });
        FakeDaemon { connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The path of the request on `stream`, its head read to the blank line.
fn request_path(stream: &UnixStream) -> String {
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    let _ = reader.read_line(&mut first);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let target = first.split_whitespace().nth(1).unwrap_or("");
    target.split('?').next().unwrap_or("").to_string()
}

/// Removes a directory the test planted, however the test ends.
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn a_runtime_directory_another_user_made_first_is_refused_unused() {
    if skip_unless_root_with("accounts made with useradd", &["useradd"]) {
        return;
    }
    let victim = unprivileged_user();
    let other = other_user();
    // Where the victim's socket lives without XDG_RUNTIME_DIR, made first
    // by the other user, wide open, with a fake daemon in it.
    let dir = PathBuf::from(format!("/tmp/banger-{}", victim.uid));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let _planted = Planted(dir.clone());
    let socket = dir.join("bangerd.sock");
    let fake = FakeDaemon::serve(&socket, vec![]);
    for p in [&dir, &socket] {
        std::os::unix::fs::chown(p, Some(other.uid), Some(other.gid)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let env = Env::as_user("", victim);

    let out = env
        .cmd(&["vm", "list"])
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run banger");

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "vm list trusted the fake: {stderr}");
    assert!(
        stderr.contains(&format!(
            "error: cannot use the runtime directory (or set XDG_RUNTIME_DIR to a directory of your own): {} belongs to uid {}, not to you (uid {})",
            dir.display(),
            other.uid,
            victim.uid
        )),
        "{stderr}"
    );
    assert_eq!(fake.connections(), 0, "the fake daemon was never contacted");
    assert_eq!(mode(&dir), 0o777, "another user's directory is left alone");
}

/// Runs the CLI as `user` under umask 000, with `env`'s environment.
fn run_under_umask_000(env: &Env, user: User, args: &[&str]) -> Output {
    let template = env.cmd(args);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(template.get_program())
        .args(template.get_args())
        .current_dir(env.root.path())
        .uid(user.uid)
        .gid(user.gid);
    for (key, value) in template.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd.output().expect("run banger under umask 000")
}

#[test]
fn a_daemon_started_under_umask_000_stays_owner_only_and_closes_other_uids() {
    if skip_unless_root_with("accounts made with useradd", &["useradd"]) {
        return;
    }
    let user = unprivileged_user();
    let env = Env::as_user("", user);

    let out = run_under_umask_000(&env, user, &["vm", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let state = env.state_dir();
    let cache = env.root.path().join("cache/banger");
    for dir in [&state, &env.runtime_dir(), &cache] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    let socket = env.runtime_dir().join("bangerd.sock");
    for file in [
        &socket,
        &state.join("banger.db"),
        &state.join("bangerd.log"),
        &state.join("bangerd.lock"),
    ] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
        assert_eq!(
            std::fs::metadata(file).unwrap().uid(),
            user.uid,
            "{}",
            file.display()
        );
    }

    // Root passes any file mode, so the connection is made; the daemon,
    // seeing a peer uid that is not its own, closes it unanswered.
    let mut stream = UnixStream::connect(&socket).expect("root reaches the socket file");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(b"GET /v1/daemon HTTP/1.1\r\nhost: bangerd\r\n\r\n");
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "the daemon answered root: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "closed, not timed out: {read:?}"
    );
    let log = std::fs::read_to_string(state.join("bangerd.log")).unwrap();
    assert!(
        log.lines().any(
            |l| l.contains("refused an API connection from another user") && l.contains("uid=0")
        ),
        "{log}"
    );
    // Its own user is still served.
    env.ok(&["daemon", "status"]);
}

#[test]
fn ssh_config_refuses_a_daemon_that_injects_a_config_line() {
    if skip() {
        return;
    }
    let env = Env::new("");
    let runtime = env.runtime_dir();
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let vm = r#"{"id":"1","name":"web","state":"running","image":"debian","cpus":1,"memory_mib":512,"disk_size_mib":4096,"created_at":0,"dir":"/s/vms/1"}"#;
    let target = r#"{"user":"root","host":"x\n  ProxyCommand touch /tmp/pwned","port":22,"key":"/k/id","proxy":false}"#;
    let fake = FakeDaemon::serve(
        &runtime.join("bangerd.sock"),
        vec![
            ("/v1/vms/web", vm.to_string()),
            ("/v1/vms/web/ssh", target.to_string()),
        ],
    );

    let out = env.run(&["vm", "ssh-config", "web"]);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.trim_end(),
        r#"error: refusing the daemon's ssh host "x\n  ProxyCommand touch /tmp/pwned" for vm "web": a host is an IP address or a DNS name; a daemon that sends this is broken or not banger's"#
    );
    assert!(fake.connections() > 0, "the fake daemon was asked");
}

/// Runs the CLI as the account `name` through `runuser`, which sets up its
/// supplementary groups as a login would, against the socket `socket`.
fn run_as_member(env: &Env, name: &str, socket: &Path, args: &[&str]) -> Output {
    let bin = env.root.path().join("shared-bin/banger");
    if !bin.exists() {
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::copy(banger_e2e::bin("banger"), &bin).unwrap();
        std::fs::set_permissions(
            bin.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    Command::new("runuser")
        .args(["-u", name, "--"])
        .arg(&bin)
        .args(args)
        .env("BANGER_SOCKET", socket)
        .env("XDG_RUNTIME_DIR", "/nonexistent-banger-e2e")
        .current_dir("/")
        .output()
        .expect("run banger through runuser")
}

#[test]
fn a_root_daemon_admits_its_api_group_and_nobody_else() {
    if skip_unless_root_with(
        "accounts and a group",
        &["useradd", "groupadd", "usermod", "runuser"],
    ) {
        return;
    }
    const GROUP: &str = "banger-e2e-api";
    let sbin = "/usr/sbin:/usr/bin:/sbin:/bin";
    let _ = Command::new("groupadd")
        .arg(GROUP)
        .env("PATH", sbin)
        .status();
    let _member = unprivileged_user();
    let st = Command::new("usermod")
        .args(["-aG", GROUP, "banger-e2e"])
        .env("PATH", sbin)
        .status()
        .unwrap();
    assert!(st.success(), "usermod -aG {GROUP} banger-e2e");
    let _outsider = other_user();

    let env = Env::new(&format!("api_group = \"{GROUP}\"\n"));
    env.ok(&["vm", "list"]);
    // The accounts may pass through the test's own directories.
    for d in [env.root.path().to_path_buf(), env.root.path().join("run")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let socket = env.runtime_dir().join("bangerd.sock");
    assert_eq!(mode(&socket), 0o660, "the socket is the group's too");
    assert_eq!(
        mode(&env.runtime_dir()),
        0o710,
        "the group may enter, not list"
    );

    let member = run_as_member(&env, "banger-e2e", &socket, &["vm", "list", "--json"]);
    assert!(
        member.status.success(),
        "a member of api_group uses the root daemon: {}",
        String::from_utf8_lossy(&member.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&member.stdout).trim(), "[]");

    // Someone outside the group: the socket's mode stops them, and were it
    // reached another way, the daemon's peer check closes the connection.
    let outsider = run_as_member(&env, "banger-e2e-other", &socket, &["vm", "list", "--json"]);
    assert!(
        !outsider.status.success(),
        "an outsider is refused: {}",
        String::from_utf8_lossy(&outsider.stdout)
    );
    let _ = env.run(&["daemon", "stop"]);
}
