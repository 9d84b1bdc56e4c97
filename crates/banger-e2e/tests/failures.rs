//! End-to-end: failing the way a user would notice, through the real CLI
//! and daemon. A dynamically linked agent is refused before any image is
//! made, and one left next to bangerd is passed over; an exec whose guest
//! stops answering ends on a second interrupt, or a grace period after the
//! first, with 125; a guest whose kernel panics shows `failed` at once,
//! with the panic in its error; a `vm run --rm` whose CLI is killed (while
//! the VM boots, while the command runs, or while no daemon runs) leaves no
//! VM behind, nor does a `vm create` killed during the boot, nor a `vm run
//! --rm` whose daemon is killed (the CLI says so and deletes the VM through
//! a new one), and a create, `vm proxy` or `vm cp` whose daemon dies names
//! that as the cause;
//! Ctrl-C during
//! an image build cancels it, its programs stopped and nothing left.

use banger_e2e::{Env, bin, boot_permit, process_alive, skip, stderr_of, wait_until};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = "default_memory_mib = 256\ndefault_disk_size_mib = 512\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

/// Where the message about a dynamic agent tells the user to go.
const HOW_TO_BUILD: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p banger-agent --target x86_64-unknown-linux-gnu, or run scripts/build";

fn vm_json(env: &Env, name: &str) -> serde_json::Value {
    env.json(&["vm", "show", name, "--json"])
}

/// `vm create`, tried again once when the boot timed out (other tests, or
/// other people's, may be booting on the same two cores).
fn create(env: &Env, name: &str) {
    let out = env.run(&["vm", "create", "--name", name]);
    if out.status.success() {
        return;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not come up") || err.contains("did not answer"),
        "vm create {name} failed: {err}"
    );
    let _ = env.run(&["vm", "delete", name]);
    env.ok(&["vm", "create", "--name", name]);
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// SIGKILLs `env`'s daemon under `child` (a CLI with piped stderr); the
/// child's exit code and stderr once it ended, within a minute.
fn daemon_killed_under(env: &Env, child: &mut Child) -> (Option<i32>, String) {
    signal(env.daemon_pid().expect("a daemon runs"), "KILL");
    let (code, _) = exit_within(child, Duration::from_secs(60)).expect("the cli ended");
    (code, stderr_of(child))
}

/// Bytes process `pid` and its descendants (the harness may run the CLI
/// under a wrapper) have read so far (`/proc/PID/io`): a copy reads its
/// source as it sends it (socket sends are not counted as writes there).
fn read_so_far(pid: u32) -> u64 {
    let own: u64 = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("rchar: "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0);
    let children: u64 = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(read_so_far)
        .sum();
    own + children
}

/// Waits up to `timeout` for `child` to exit; its exit code and how long
/// that took, or `None` (and the child killed) when it did not.
fn exit_within(child: &mut Child, timeout: Duration) -> Option<(Option<i32>, Duration)> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status.code(), t0.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_dynamically_linked_agent_is_refused_at_image_build_saying_how_to_build_it() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG);
    // The daemon this command starts takes the agent from its environment.
    let out = env
        .cmd(&["image", "build", "--preset", "minimal"])
        .env("BANGER_AGENT_BIN", "/bin/true")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("agent binary /bin/true is dynamically linked (it needs /lib"),
        "{err}"
    );
    assert!(err.contains(HOW_TO_BUILD), "{err}");
    let images = env.json(&["image", "list", "--json"]);
    assert_eq!(images, serde_json::json!([]), "no image was made");
}

#[test]
fn a_dynamic_agent_next_to_bangerd_is_passed_over() {
    if skip() {
        return;
    }
    // What a plain `cargo build` of old left: bangerd with a dynamic
    // banger-agent beside it, and no static build anywhere it looks.
    let env = Env::new(CONFIG);
    let bins = env.root.path().join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for b in [bin("banger"), bin("bangerd")] {
        std::fs::copy(&b, bins.join(b.file_name().unwrap())).unwrap();
    }
    std::fs::copy("/bin/true", bins.join("banger-agent")).unwrap();
    // The env's own dirs, with these binaries and no agent named.
    let template = env.cmd(&[]);
    let out = Command::new(bins.join("banger"))
        .args(["doctor", "--json"])
        .envs(template.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("BANGER_DAEMON_BIN", bins.join("bangerd"))
        .env_remove("BANGER_AGENT_BIN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let agent = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .expect("doctor has an agent line")
        .clone();
    assert_eq!(agent["status"], "warn", "{agent}");
    let detail = agent["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("found no banger-agent binary the guest can run")
            && detail.contains("banger-agent is dynamically linked")
            && detail.contains(HOW_TO_BUILD),
        "{detail}"
    );
    env.run(&["daemon", "stop"]);
}

#[test]
fn an_exec_whose_guest_stops_answering_ends_on_interrupts_with_125() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();
    create(&env, "hang");
    let engine = vm_json(&env, "hang")["pid"].as_u64().unwrap() as u32;

    // Each round: a command that runs until interrupted, then the whole
    // guest frozen (the engine stopped), then our signals.
    let rounds: [(&str, &[&str], Duration); 2] = [
        ("a second Ctrl-C", &["INT", "INT"], Duration::from_secs(2)),
        (
            "the grace after one SIGTERM",
            &["TERM"],
            Duration::from_secs(6),
        ),
    ];
    for (what, signals, limit) in rounds {
        let mut exec = env
            .cmd(&[
                "vm",
                "exec",
                "hang",
                "--",
                "sh",
                "-c",
                "echo started; sleep 1000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(exec.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "started\n", "{what}");
        signal(engine, "STOP");
        for sig in signals {
            signal(exec.id(), sig);
            std::thread::sleep(Duration::from_millis(200));
        }
        let ended = exit_within(&mut exec, Duration::from_secs(15));
        signal(engine, "CONT");
        let (code, took) = ended.unwrap_or_else(|| panic!("{what}: banger still runs after 15 s"));
        let err = stderr_of(&mut exec);
        eprintln!("{what}: exit {code:?} after {took:?}: {}", err.trim_end());
        assert_eq!(code, Some(125), "{what}: {err}");
        assert!(took < limit, "{what}: took {took:?}");
        assert!(err.contains("stopped waiting"), "{what}: {err}");
    }

    // The guest answers again once it runs, and its agent is still there.
    let out = env.ok(&["vm", "exec", "hang", "--", "echo", "back"]);
    assert_eq!(out, "back\n");
    env.ok(&["vm", "delete", "hang"]);
}

#[test]
fn a_guest_whose_kernel_panics_shows_failed_with_the_panic() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();
    create(&env, "doomed");
    let out = env.run(&[
        "vm",
        "exec",
        "doomed",
        "--",
        "sh",
        "-c",
        "echo c > /proc/sysrq-trigger",
    ]);
    assert_eq!(out.status.code(), Some(125), "the guest went away mid-exec");
    let t0 = Instant::now();
    let mut last = serde_json::Value::Null;
    let failed = wait_until(Duration::from_secs(2), || {
        last = vm_json(&env, "doomed");
        last["state"] == "failed"
    });
    assert!(
        failed,
        "not failed {:?} after the exec: {last}",
        t0.elapsed()
    );
    let error = last["last_error"].as_str().unwrap_or_default();
    eprintln!("failed after {:?}: {error}", t0.elapsed());
    assert!(
        error.starts_with("the guest stopped unexpectedly: ")
            && (error.contains("Kernel panic") || error.contains("sysrq")),
        "{error}"
    );
    assert!(last["pid"].is_null(), "{last}");
    env.ok(&["vm", "delete", "doomed"]);
}

/// `vm run --rm` is a promise about the VM, not about its CLI: a CLI killed
/// at any point (Ctrl-C during the boot, a harness's timeout) must not
/// leave its VM running. The daemon watches the process that asked and
/// deletes the VM when it ends, and a daemon started after that process
/// ended (no daemon watched) deletes it at start-up. A `vm create`
/// interrupted during the boot is cancelled the same way, and `vm run --rm
/// --name` of a VM that existed takes that VM when killed.
#[test]
fn a_killed_vm_run_rm_leaves_no_vm_behind() {
    if skip() {
        return;
    }
    let _permit = boot_permit();
    let env = Env::new(CONFIG).with_image();
    let vms = || {
        env.json(&["vm", "list", "--json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let state = || {
        vms()
            .first()
            .and_then(|v| v["state"].as_str().map(String::from))
    };
    let spawn = |args: &[&str]| {
        env.cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let run = || spawn(&["vm", "run", "--rm", "--no-checkout", "--", "sleep", "600"]);
    let in_state = |want: &str| {
        assert!(
            wait_until(Duration::from_secs(120), || state().as_deref()
                == Some(want)),
            "no vm came to {want}: {:?}",
            vms()
        )
    };
    let gone = |when: &str, engine: Option<u32>| {
        assert!(
            wait_until(Duration::from_secs(60), || vms().is_empty()),
            "{when}: the vm is still there: {:?}",
            vms()
        );
        if let Some(pid) = engine {
            assert!(!process_alive(pid), "{when}: its engine still runs");
        }
    };

    // Killed during the boot: the VM goes once its create has finished.
    let mut cli = run();
    in_state("creating");
    cli.kill().unwrap();
    cli.wait().unwrap();
    gone("killed while the vm booted", None);

    // Killed while the command runs.
    let mut cli = run();
    in_state("running");
    let name = vms()[0]["name"].as_str().unwrap().to_string();
    let engine = env.vm_pid(&name);
    cli.kill().unwrap();
    cli.wait().unwrap();
    gone("killed while the command ran", Some(engine));

    // Killed while no daemon ran: frozen first, so it cannot delete the VM
    // itself when the daemon goes away; the next daemon deletes it.
    let mut cli = run();
    in_state("running");
    let name = vms()[0]["name"].as_str().unwrap().to_string();
    let engine = env.vm_pid(&name);
    signal(cli.id(), "STOP");
    env.ok(&["daemon", "stop"]);
    assert!(
        process_alive(engine),
        "a stopped daemon leaves its vms running"
    );
    cli.kill().unwrap();
    cli.wait().unwrap();
    gone("killed while no daemon ran", Some(engine));

    // `vm create` killed during the boot: the VM goes once it is up; one
    // whose create finished stays when its CLI has exited.
    let mut cli = spawn(&["vm", "create", "--name", "abandoned"]);
    in_state("creating");
    cli.kill().unwrap();
    cli.wait().unwrap();
    gone("vm create killed while the vm booted", None);
    env.ok(&["vm", "create", "--name", "made"]);
    env.ok(&["vm", "exec", "made", "--", "true"]);
    assert_eq!(state().as_deref(), Some("running"));
    env.ok(&["vm", "delete", "made"]);

    // A VM `vm run` keeps (no --rm) is not tied to its CLI once it is up.
    let mut cli = spawn(&[
        "vm",
        "run",
        "--name",
        "kept",
        "--no-checkout",
        "--",
        "sleep",
        "600",
    ]);
    in_state("running");
    cli.kill().unwrap();
    cli.wait().unwrap();
    env.ok(&["vm", "exec", "kept", "--", "true"]);
    assert_eq!(state().as_deref(), Some("running"));

    // `vm run --rm --name` of a VM that was there: killed, it takes the VM.
    let engine = env.vm_pid("kept");
    let mut cli = spawn(&[
        "vm",
        "run",
        "--rm",
        "--name",
        "kept",
        "--no-checkout",
        "--",
        "sh",
        "-c",
        "touch /root/started; sleep 600",
    ]);
    assert!(
        wait_until(Duration::from_secs(60), || env
            .run(&["vm", "exec", "kept", "--", "test", "-f", "/root/started"])
            .status
            .success()),
        "the command never started"
    );
    cli.kill().unwrap();
    cli.wait().unwrap();
    gone("vm run --rm --name of an existing vm killed", Some(engine));

    // The daemon killed while the command runs: the command ends with its
    // connection, and the CLI says so (125) and starts a daemon again to
    // delete the VM, rather than saying it could not.
    let mut cli = env
        .cmd(&[
            "vm",
            "run",
            "--rm",
            "--no-checkout",
            "--",
            "sh",
            "-c",
            "echo started; sleep 600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(cli.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n", "the command never started");
    let name = vms()[0]["name"].as_str().unwrap().to_string();
    let engine = env.vm_pid(&name);
    let (code, err) = daemon_killed_under(&env, &mut cli);
    assert_eq!(code, Some(125), "{err}");
    assert!(
        err.contains("the daemon stopped while the command ran"),
        "{err}"
    );
    assert!(!err.contains("not deleted"), "{err}");
    assert!(!process_alive(engine), "the cli deleted the vm: {err}");
    assert!(vms().is_empty(), "{:?}", vms());

    // `vm proxy` (ssh's ProxyCommand when the VM has no network) whose
    // daemon dies: its stderr, which ssh shows, says that is why.
    env.ok(&["vm", "create", "--name", "px"]);
    env.ok(&[
        "vm",
        "session",
        "start",
        "px",
        "--name",
        "listen",
        "--",
        "nc",
        "-l",
        "-p",
        "7000",
        "-e",
        "sh",
        "-c",
        "echo hello; sleep 600",
    ]);
    let proxy = || {
        env.cmd(&["vm", "proxy", "px", "7000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The session's listener takes a moment to listen: until then the
    // proxy's connect is refused and it ends.
    let t0 = Instant::now();
    let (mut cli, _out) = loop {
        let mut cli = proxy();
        let mut line = String::new();
        let mut out = BufReader::new(cli.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        if line == "hello\n" {
            break (cli, out);
        }
        let _ = cli.wait();
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the guest's listener never answered through the proxy"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (code, err) = daemon_killed_under(&env, &mut cli);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("the daemon stopped, and this connection to px with it"),
        "{err}"
    );
    // `vm cp` whose daemon dies mid-copy: said so, and nothing half-copied.
    let big = env.root.path().join("big.bin");
    {
        // Data, not a hole (the archive sends holes as such).
        use std::io::Write;
        let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
        let mut f = std::fs::File::create(&big).unwrap();
        for _ in 0..200 {
            f.write_all(&chunk).unwrap();
        }
    }
    let mut cli = env
        .cmd(&["vm", "cp", big.to_str().unwrap(), "px:/root/big.bin"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed once 20 MB have gone out (the CLI reads as it sends).
    if !wait_until(Duration::from_secs(60), || read_so_far(cli.id()) > 20 << 20) {
        let _ = cli.kill();
        let err = stderr_of(&mut cli);
        panic!(
            "the copy never got going ({:?}): {err}",
            cli.wait().unwrap().code()
        );
    }
    let (code, err) = daemon_killed_under(&env, &mut cli);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("the daemon stopped during the copy"), "{err}");
    let partial = env.run(&["vm", "exec", "px", "--", "test", "-e", "/root/big.bin"]);
    assert!(!partial.status.success(), "a half copy landed in the guest");
    env.ok(&["vm", "delete", "px"]);

    // A create whose daemon dies under it: the CLI names that as the cause
    // (not a broken chunked body), and the next daemon removes the VM.
    env.ok(&["daemon", "stop"]);
    let out = env
        .cmd(&["vm", "create", "--name", "orphan"])
        .env(banger_core::fault::ENV, "create:engine/done")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the daemon stopped before the operation finished"),
        "{err}"
    );
    gone("a create whose daemon was killed", None);
}

/// Ctrl-C during `image build`: the daemon stops the program running (here
/// a `mkfs.ext4` that hangs, shadowing the real one), removes what the
/// build made, and the CLI exits 130 saying so; the image does not exist.
#[test]
fn ctrl_c_cancels_an_image_build_and_leaves_nothing() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG);
    let (path, mark) = hanging_mkfs(&env);
    let mut cli = env
        .cmd(&["image", "build", "--preset", "minimal", "--name", "slow"])
        .env("PATH", &path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sleeper = hung_mkfs(&mark);
    signal(cli.id(), "INT");
    let (code, took) = exit_within(&mut cli, Duration::from_secs(30)).expect("the CLI exits");
    let err = stderr_of(&mut cli);
    assert_eq!(code, Some(130), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(err.contains("cancelling"), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    assert!(!process_alive(sleeper), "the build's program still runs");
    let images = env.json(&["image", "list", "--json"]);
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["name"] != "slow"),
        "{images}"
    );
    let left: Vec<_> = std::fs::read_dir(env.state_dir().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("slow"))
        .collect();
    assert!(left.is_empty(), "the build left {left:?}");
    let op = env.json(&["image", "show", "minimal", "--json"]);
    assert_eq!(op["name"], "minimal", "the other image is untouched");
}

/// Readies `env` for a build that hangs in `mkfs.ext4`: the packages
/// fetched and unpacked into the shared cache (a build first), the daemon
/// stopped, and a `mkfs.ext4` that writes its pid to the returned mark and
/// sleeps, first in the returned `PATH` (a daemon started with it uses it).
fn hanging_mkfs(env: &Env) -> (String, std::path::PathBuf) {
    env.ok(&["image", "build", "--preset", "minimal"]);
    env.ok(&["daemon", "stop"]);
    let shadow = env.root.path().join("shadow");
    std::fs::create_dir_all(&shadow).unwrap();
    let mark = env.root.path().join("mkfs-started");
    let script = format!("#!/bin/sh\necho $$ > {}\nsleep 600\n", mark.display());
    let mkfs = shadow.join("mkfs.ext4");
    std::fs::write(&mkfs, script).unwrap();
    let mut mode = std::fs::metadata(&mkfs).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o755);
    std::fs::set_permissions(&mkfs, mode).unwrap();
    let path = format!(
        "{}:{}",
        shadow.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (path, mark)
}

/// The pid of the hanging `mkfs.ext4` once a build has reached it.
fn hung_mkfs(mark: &std::path::Path) -> u32 {
    // The shell makes the file before it writes its pid: wait for the pid.
    let pid = || std::fs::read_to_string(mark).ok()?.trim().parse().ok();
    assert!(
        wait_until(Duration::from_secs(60), || pid().is_some()),
        "the build never reached mkfs"
    );
    pid().unwrap()
}

/// A `vm create` killed while it builds its image on first use stops that
/// build: no VM, no image, the build's program gone.
#[test]
fn a_create_killed_while_it_builds_its_image_stops_the_build() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG);
    let (path, mark) = hanging_mkfs(&env);
    env.cmd(&["image", "delete", "minimal"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let mut cli = env
        .cmd(&["vm", "create", "--name", "first"])
        .env("PATH", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sleeper = hung_mkfs(&mark);
    cli.kill().unwrap();
    cli.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || !process_alive(sleeper)),
        "the build's program still runs"
    );
    let vms = || env.json(&["vm", "list", "--json"]);
    assert!(
        wait_until(Duration::from_secs(30), || vms()
            .as_array()
            .unwrap()
            .is_empty()),
        "{}",
        vms()
    );
    let images = env.json(&["image", "list", "--json"]);
    assert!(images.as_array().unwrap().is_empty(), "{images}");
}
