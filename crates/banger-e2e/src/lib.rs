//! Harness for banger's end-to-end tests: each [`Env`] is a fully isolated
//! banger (its own XDG config/state/runtime dirs, so its own daemon and
//! store) driven through the real `banger` CLI, booting real QEMU guests.
//!
//! Boots are expensive under TCG on two cores, so every test that boots
//! takes a [`boot_permit`] first: at most two VMs boot at once per process.
//! Prerequisites (QEMU, the static agent, the built binaries) are checked by
//! [`Env::new`]; when one is missing the test prints why and is skipped,
//! unless `BANGER_E2E_REQUIRED=1` (set in CI), where a skip is a failure.
//! An env's drop deletes its VMs and stops its daemon, and fails the test
//! when anything of it still runs after that: clean-up never hides a leak.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where the workspace's build output is.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

pub fn bin(name: &str) -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    target_dir().join(profile).join(name)
}

pub fn agent_bin() -> PathBuf {
    std::env::var_os("BANGER_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("x86_64-unknown-linux-gnu/release/banger-agent"))
}

/// Shared download cache, so each env does not fetch the kernel again.
pub fn shared_cache() -> PathBuf {
    let p = target_dir().join("e2e-cache");
    std::fs::create_dir_all(&p).expect("create e2e cache");
    p
}

/// Where `p` is on PATH.
pub fn which(p: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|f| f.is_file())
}

/// The unpacked Debian cloud kernel's `/lib/modules/<release>` in the
/// shared cache (there after any image build).
pub fn kernel_modules_dir() -> PathBuf {
    let extract = shared_cache().join("banger/extract");
    let pkg = std::fs::read_dir(&extract)
        .expect("the package cache has unpacked packages")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("linux-image-")
        })
        .expect("kernel package unpacked");
    std::fs::read_dir(pkg.join("lib/modules"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Why the e2e suite cannot run here, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    for tool in [
        "qemu-system-x86_64",
        "qemu-img",
        "mkfs.ext4",
        "apt-get",
        "dpkg-deb",
    ] {
        if which(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (run the README's setup command)"
            ));
        }
    }
    for b in [bin("banger"), bin("bangerd"), agent_bin()] {
        if !b.is_file() {
            return Some(format!(
                "{} is not built (run scripts/test, which builds it)",
                b.display()
            ));
        }
    }
    None
}

/// Returns true when the test should be skipped (after saying why).
pub fn skip() -> bool {
    skip_for(missing_prerequisite())
}

/// Like [`skip`], for a test that also needs root (`why_root` says for
/// what) and the host tools `tools` (found in PATH or the sbin dirs).
pub fn skip_unless_root_with(why_root: &str, tools: &[&str]) -> bool {
    if skip() {
        return true;
    }
    if banger_sys::process::euid() != 0 {
        return skip_for(Some(format!("{why_root} need root")));
    }
    let absent = tools
        .iter()
        .find(|t| banger_sys::command::which(t).is_none());
    skip_for(absent.map(|t| format!("{t} is not installed (run the README's setup command)")))
}

/// Says why and returns true, or fails where CI demands the real thing.
fn skip_for(why: Option<String>) -> bool {
    let Some(why) = why else {
        return false;
    };
    banger_sys::skip_test(&format!("e2e prerequisite missing: {why}"));
    true
}

struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

pub struct BootPermit(&'static Semaphore);

impl Drop for BootPermit {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

/// At most two concurrent booting tests per test binary.
pub fn boot_permit() -> BootPermit {
    static SEM: OnceLock<Semaphore> = OnceLock::new();
    let sem = SEM.get_or_init(|| Semaphore {
        free: Mutex::new(2),
        cv: Condvar::new(),
    });
    let mut free = sem.free.lock().unwrap_or_else(|p| p.into_inner());
    while *free == 0 {
        free = sem.cv.wait(free).unwrap_or_else(|p| p.into_inner());
    }
    *free -= 1;
    BootPermit(sem)
}

/// An account without privileges, for the rootless tests.
#[derive(Debug, Clone, Copy)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

impl User {
    /// Its home directory, from the passwd database.
    pub fn home(self) -> Option<PathBuf> {
        passwd_entry(&self.uid.to_string()).and_then(|f| f.get(5).map(PathBuf::from))
    }
}

/// The name of the account [`unprivileged_user`] makes.
pub const E2E_USER: &str = "banger-e2e";

/// A plain user account, made on first use (needs root) the way a Debian
/// admin makes one: `adduser` with its defaults, so a home only its owner
/// can enter (`DIR_MODE=0700`) and a subordinate id range in `/etc/subuid`
/// and `/etc/subgid`, which mmdebstrap's unshare mode needs. An account an
/// older run made with `useradd` (no home, or a 0755 one) is brought to
/// the same shape, so the test never passes on a laxer account.
pub fn unprivileged_user() -> User {
    static USER: OnceLock<User> = OnceLock::new();
    *USER.get_or_init(|| {
        let sbin_path = "/usr/sbin:/usr/bin:/sbin:/bin";
        if passwd_entry(E2E_USER).is_none() {
            let st = Command::new("adduser")
                .args(["--disabled-password", "--gecos", "", E2E_USER])
                .env("PATH", sbin_path)
                .stdout(Stdio::null())
                .status()
                .expect("run adduser");
            assert!(st.success(), "adduser {E2E_USER} failed");
        }
        let fields = passwd_entry(E2E_USER).expect("the account exists");
        let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
        let user = User {
            uid: field(2).parse().expect("uid"),
            gid: field(3).parse().expect("gid"),
        };
        let home = PathBuf::from(field(5));
        assert!(
            home.starts_with("/home/"),
            "{E2E_USER}'s home is {home:?}, not under /home"
        );
        {
            use std::os::unix::fs::{PermissionsExt, chown};
            if !home.is_dir() {
                std::fs::create_dir_all(&home).expect("create the account's home");
            }
            chown(&home, Some(user.uid), Some(user.gid)).expect("chown the home");
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
                .expect("chmod 700 the home");
        }
        for file in ["/etc/subuid", "/etc/subgid"] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if !text.lines().any(|l| l.starts_with(&format!("{E2E_USER}:"))) {
                // A range above what adduser hands out by default.
                let line = format!("{E2E_USER}:1800000000:65536\n");
                std::fs::write(file, text + &line).expect("add a subordinate id range");
            }
        }
        user
    })
}

/// The fields of the passwd database's line for `name` (or uid).
fn passwd_entry(name: &str) -> Option<Vec<String>> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !line.is_empty())
        .then(|| line.split(':').map(str::to_string).collect())
}

/// One isolated banger instance.
pub struct Env {
    pub root: tempfile::TempDir,
    /// A network namespace this env runs every command in.
    pub netns: Option<String>,
    /// Whether this env made `netns` (and so ends it and answers for what
    /// runs in it).
    owns_netns: bool,
    /// `XDG_STATE_HOME`: the state dir is its `banger`.
    state_home: PathBuf,
    /// The account every command runs as, when not the test's own.
    pub user: Option<User>,
}

impl Env {
    /// A fresh instance with `config` as its config.toml.
    pub fn new(config: &str) -> Env {
        // Unix sockets cap at 108 bytes: keep the root short.
        let root = tempfile::Builder::new()
            .prefix("bg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        for d in ["config/banger", "state", "run"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        std::fs::write(root.path().join("config/banger/config.toml"), config).unwrap();
        Env {
            state_home: root.path().join("state"),
            root,
            netns: None,
            owns_netns: false,
            user: None,
        }
    }

    /// Replaces config.toml; a daemon started after (`daemon stop` the
    /// running one first) reads it.
    pub fn reconfigure(&self, config: &str) {
        std::fs::write(self.root.path().join("config/banger/config.toml"), config).unwrap();
    }

    /// Waits for `image`'s standby to be ready, as `image show` reports it;
    /// false when it was not within two minutes.
    pub fn standby_ready(&self, image: &str) -> bool {
        wait_until(Duration::from_secs(120), || {
            let out = self.run(&["image", "show", image, "--json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["warm"]["standby"] == "ready")
        })
    }

    /// Like [`Env::new`], with every command run as `user` (needs root):
    /// the instance's files, its own copies of the binaries (the build tree
    /// may sit where the user cannot read), its cache and its home all
    /// belong to that user, and only it can enter them, as under a home
    /// `adduser` made: the instance's root is 0700 (the directories banger
    /// makes inside are banger's business).
    pub fn as_user(config: &str, user: User) -> Env {
        use std::os::unix::fs::PermissionsExt;
        let mut env = Env::new(config);
        let bins = env.root.path().join("bin");
        std::fs::create_dir_all(&bins).unwrap();
        for b in [bin("banger"), bin("bangerd"), agent_bin()] {
            std::fs::copy(&b, bins.join(b.file_name().unwrap())).expect("copy a binary");
        }
        for d in ["cache", "home"] {
            std::fs::create_dir_all(env.root.path().join(d)).unwrap();
        }
        let st = Command::new("chown")
            .args(["-R", &format!("{}:{}", user.uid, user.gid)])
            .arg(env.root.path())
            .status()
            .unwrap();
        assert!(st.success(), "chown the env to {}", user.uid);
        for private in [env.root.path().to_path_buf(), env.root.path().join("home")] {
            std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        env.user = Some(user);
        env
    }

    /// Like [`Env::new`], with the daemon, its VMs and their network inside
    /// a fresh network namespace (needs root): nothing reaches the host's
    /// own network.
    pub fn in_netns(config: &str) -> Env {
        let mut env = Env::new(config);
        let ns = format!(
            "bge2e-{}",
            env.root
                .path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace(['.', '_'], "")
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot create network namespace {ns}");
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])
            .status();
        env.netns = Some(ns);
        env.owns_netns = true;
        env
    }

    /// Like [`Env::new`], in `other`'s network namespace: a second instance
    /// beside it (its own bridge, if it has one, is the config's business).
    pub fn in_netns_of(config: &str, other: &Env) -> Env {
        let mut env = Env::new(config);
        env.netns = other.netns.clone();
        env
    }

    /// Puts the state dir at `home/banger` (a directory under this env's
    /// root, so what names it is this env's).
    pub fn with_state_home(mut self, home: PathBuf) -> Env {
        assert!(home.starts_with(self.root.path()), "{}", home.display());
        std::fs::create_dir_all(&home).unwrap();
        self.state_home = home;
        self
    }

    /// A command run inside this env's namespace (or plainly, without one).
    pub fn host_cmd(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_home.join("banger")
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.root.path().join("run/banger")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let (banger, bangerd, agent, cache) = match self.user {
            None => (bin("banger"), bin("bangerd"), agent_bin(), shared_cache()),
            Some(_) => {
                let bins = self.root.path().join("bin");
                (
                    bins.join("banger"),
                    bins.join("bangerd"),
                    bins.join("banger-agent"),
                    self.root.path().join("cache"),
                )
            }
        };
        let mut c = self.host_cmd(&banger.to_string_lossy());
        c.args(args)
            .env("XDG_CONFIG_HOME", self.root.path().join("config"))
            .env("XDG_STATE_HOME", &self.state_home)
            .env("XDG_RUNTIME_DIR", self.root.path().join("run"))
            .env("XDG_CACHE_HOME", cache)
            .env("BANGER_DAEMON_BIN", bangerd)
            .env("BANGER_AGENT_BIN", agent)
            .stdin(Stdio::null());
        if let Some(user) = self.user {
            use std::os::unix::process::CommandExt;
            // A login's environment: its own home, and a PATH without sbin.
            c.uid(user.uid)
                .gid(user.gid)
                .env("HOME", self.root.path().join("home"))
                .env("USER", E2E_USER)
                .env("LOGNAME", E2E_USER)
                .env("PATH", "/usr/local/bin:/usr/bin:/bin");
        }
        c
    }

    /// Runs the CLI and returns its output (whatever the exit code).
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_in(self.root.path(), args)
    }

    /// [`Env::run`] with `dir` as the working directory (inside a git
    /// checkout, `vm run` copies it into the guest).
    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Output {
        let t0 = Instant::now();
        let out = self
            .cmd(args)
            .current_dir(dir)
            .output()
            .expect("run banger");
        eprintln!(
            "$ banger {} -> {:?} in {:.1}s\n{}",
            args.join(" "),
            out.status.code(),
            t0.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        out
    }

    /// Runs the CLI, asserts success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_in(self.root.path(), args)
    }

    /// [`Env::ok`] with `dir` as the working directory.
    pub fn ok_in(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run_in(dir, args);
        assert!(
            out.status.success(),
            "banger {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("valid json")
    }

    /// Builds the minimal image in this env.
    pub fn with_image(self) -> Env {
        self.ok(&["image", "build", "--preset", "minimal"]);
        self
    }

    /// Registers `from`'s image `name` here under the same name (its
    /// kernel and rootfs, the kernel's modules from the shared cache): a
    /// namespace has no way out to a mirror to build it.
    pub fn register_from(&self, from: &Env, name: &str) {
        let dir = from.state_dir().join("images").join(name);
        let modules = kernel_modules_dir();
        self.ok(&[
            "image",
            "register",
            "--name",
            name,
            "--kernel",
            &dir.join("vmlinux").to_string_lossy(),
            "--rootfs",
            &dir.join("rootfs.ext4").to_string_lossy(),
            "--modules",
            &modules.to_string_lossy(),
        ]);
    }

    /// Asserts `vm ssh VM` runs commands and returns their exit codes.
    pub fn assert_ssh_works(&self, vm: &str) {
        let out = self.run(&["vm", "ssh", vm, "--", "git", "--version"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("git version"));
        let out = self.run(&["vm", "ssh", vm, "--", "sh", "-c", "exit 3"]);
        assert_eq!(out.status.code(), Some(3), "ssh passes the exit code");
        // One word is a command line for the guest's shell, as with ssh.
        let out = self.run(&["vm", "ssh", vm, "--", "echo one && exit 4"]);
        assert_eq!(
            out.status.code(),
            Some(4),
            "a command line runs in the shell"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "one\n");
    }

    /// Serves `body` over HTTP on `guest_port` inside `vm` (python3's
    /// http.server, detached), then waits until 127.0.0.1:`host_port`
    /// (where the vm's port is published) answers with it.
    pub fn assert_published(&self, vm: &str, guest_port: u16, host_port: u16, body: &str) {
        let serve = format!(
            "mkdir -p /tmp/www && cd /tmp/www && echo {body} > index.html && (setsid python3 -m http.server {guest_port} >/dev/null 2>&1 &)"
        );
        self.ok(&["vm", "exec", vm, "--", "sh", "-c", &serve]);
        assert!(
            wait_until(Duration::from_secs(20), || self
                .http_get(host_port)
                .is_some_and(|r| r.contains(body))),
            "127.0.0.1:{host_port} did not reach port {guest_port} of {vm}"
        );
    }

    /// An HTTP GET to 127.0.0.1:`port` (inside the namespace, with one):
    /// the body, or None when nothing answered (refused, reset, timed out).
    /// Any other failure is the check's own and fails the test, so a broken
    /// probe never passes as "unreachable".
    pub fn http_get(&self, port: u16) -> Option<String> {
        const UNREACHABLE: i32 = 3;
        let script = r#"import socket,sys,urllib.error,urllib.request
def unreachable(e):
    print(f"unreachable: {e!r}", file=sys.stderr); sys.exit(3)
try:
    print(urllib.request.urlopen("http://127.0.0.1:"+sys.argv[1],timeout=3).read().decode())
except urllib.error.HTTPError:
    raise
except (ConnectionError, TimeoutError, socket.timeout) as e:
    unreachable(e)
except urllib.error.URLError as e:
    if isinstance(e.reason, (ConnectionError, TimeoutError, socket.timeout)):
        unreachable(e)
    raise"#;
        let out = self
            .host_cmd("python3")
            .args(["-c", script, &port.to_string()])
            .output()
            .expect("run python3 for an HTTP check");
        match out.status.code() {
            Some(0) => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
            Some(UNREACHABLE) => None,
            code => panic!(
                "the HTTP check of 127.0.0.1:{port} itself failed ({code:?}): {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// `GET /index.html` to `host`:`port` from inside `vm`, with busybox's
    /// nc (its static wget cannot be trusted to resolve or run): what came
    /// back, or None when nothing answered (refused, unreachable, reset,
    /// timed out, or closed with no byte). Any other failure (nc missing,
    /// the exec failing) fails the test. `timeout` ends an nc that would
    /// wait forever on a half-closed connection (passt does not always pass
    /// the server's close on).
    pub fn guest_http_get(&self, vm: &str, host: &str, port: u16) -> Option<String> {
        const UNREACHABLE: i32 = 3;
        let script = r#"r=$(printf 'GET /index.html HTTP/1.0\r\n\r\n' | timeout 5 nc -w 3 "$1" "$2" 2>&1); rc=$?
case "$rc:$r" in
  0:HTTP/*|124:HTTP/*|143:HTTP/*) printf '%s\n' "$r"; exit 0 ;;
  0:|124:|143:|*refused*|*unreachable*|*"No route"*|*reset*|*"timed out"*) echo "$r" >&2; exit 3 ;;
esac
echo "nc exited with $rc: $r" >&2; exit 2"#;
        let port = port.to_string();
        let out = self.run(&[
            "vm", "exec", vm, "--", "sh", "-c", script, "sh", host, &port,
        ]);
        match out.status.code() {
            Some(0) => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
            Some(UNREACHABLE) => None,
            code => panic!(
                "the HTTP check of {host}:{port} from {vm} itself failed ({code:?}): {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// The pid of `vm`'s engine (QEMU), as `vm show` reports it.
    pub fn vm_pid(&self, vm: &str) -> u32 {
        let pid = self.json(&["vm", "show", vm, "--json"])["pid"].as_u64();
        pid.unwrap_or_else(|| panic!("vm {vm} has no engine pid")) as u32
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        let out = self.run(&["daemon", "status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["pid"].as_u64().map(|p| p as u32)
    }
}

impl Env {
    /// Ends this env the way a user would (every VM deleted, the daemon
    /// stopped), then returns what that left: processes still naming its
    /// files or running in its namespace, after a grace period for them to
    /// exit. Anything left is killed, and named here.
    fn tear_down(&self) -> Vec<String> {
        let mut leaks = Vec::new();
        if let Ok(out) = self.cmd(&["vm", "list", "--json"]).output()
            && let Ok(serde_json::Value::Array(vms)) = serde_json::from_slice(&out.stdout)
        {
            for vm in vms {
                if let Some(name) = vm["name"].as_str() {
                    let out = self.cmd(&["vm", "delete", name]).output();
                    if !out.as_ref().is_ok_and(|o| o.status.success()) {
                        leaks.push(format!("vm {name} (vm delete failed: {out:?})"));
                    }
                }
            }
        }
        let out = self.cmd(&["daemon", "stop"]).output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            leaks.push(format!("the daemon (daemon stop failed: {out:?})"));
        }
        let left = || {
            let mut pids = processes_naming(self.root.path());
            if let Some(ns) = self.netns.as_ref().filter(|_| self.owns_netns) {
                pids.extend(processes_in_netns(ns));
            }
            pids.sort_unstable();
            pids.dedup();
            pids
        };
        wait_until(Duration::from_secs(5), || left().is_empty());
        for pid in left() {
            leaks.push(format!("process {pid}: {}", cmdline(pid)));
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        if let Some(ns) = self.netns.as_ref().filter(|_| self.owns_netns) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        leaks
    }
}

impl Drop for Env {
    /// Leaves nothing running, and fails the test when that took more than
    /// deleting its VMs and stopping its daemon: a leak is a bug, not
    /// something for clean-up to hide. A test that leaves something on
    /// purpose must end it itself. While the test is already failing, the
    /// leaks are only printed.
    fn drop(&mut self) {
        let leaks = self.tear_down();
        if leaks.is_empty() {
            return;
        }
        let report = format!(
            "env {} left behind:\n  {}",
            self.root.path().display(),
            leaks.join("\n  ")
        );
        if std::thread::panicking() {
            eprintln!("{report}");
        } else {
            panic!("{report}");
        }
    }
}

/// Live processes whose command line or environment mentions `dir` (the
/// daemon's names it only in its environment), but this one.
fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let names = |pid: u32, file: &str| {
        std::fs::read(format!("/proc/{pid}/{file}"))
            .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1 && pid != std::process::id())
        .filter(|&pid| process_alive(pid) && (names(pid, "cmdline") || names(pid, "environ")))
        .collect()
}

/// Processes running in network namespace `ns`.
fn processes_in_netns(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|&p| p != 1 && process_alive(p))
                .collect()
        })
        .unwrap_or_default()
}

/// A process's command line, spaces between its arguments.
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "(gone)".into())
}

/// All `child` wrote to its (piped) stderr, read to its end: call it once
/// the child has exited or is about to.
pub fn stderr_of(child: &mut std::process::Child) -> String {
    use std::io::Read;
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut err)
        .expect("read the child's stderr");
    err
}

/// True when `pid` is a live (non-zombie) process, any of its threads.
pub fn process_alive(pid: u32) -> bool {
    banger_sys::process::alive(pid)
}

/// A process's proportional share of memory in KiB (`Pss` of
/// `/proc/PID/smaps_rollup`: each shared page split between the processes
/// that map it), so the figures of VMs sharing pages add up.
pub fn pss_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{path} has no Pss line"))
}

/// Waits until `cond` holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// Files left under `dir` (recursively), for "nothing left behind" checks.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
            out.push(p);
        } else {
            out.push(p);
        }
    }
    out
}
