//! End-to-end: real QEMU guests under whatever accelerator the host offers,
//! driven through the real CLI and daemon. Each test owns an isolated banger
//! (see `banger_e2e::Env`) and at most two boot at once.

use banger_e2e::{Env, boot_permit, files_under, process_alive, skip, wait_until};
use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

const CONFIG: &str = "default_memory_mib = 256\ndefault_disk_size_mib = 512\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

fn vm_json(env: &Env, name: &str) -> serde_json::Value {
    env.json(&["vm", "show", name, "--json"])
}

#[test]
fn run_streams_output_and_passes_exit_codes_and_stdin() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();

    // vm run --rm: the guest's uname, exit 0, and nothing left afterwards.
    let out = env.run(&["vm", "run", "--rm", "--", "uname", "-a"]);
    assert_eq!(out.status.code(), Some(0));
    let uname = String::from_utf8_lossy(&out.stdout);
    assert!(
        uname.starts_with("Linux ") && uname.contains("cloud-amd64"),
        "guest uname: {uname}"
    );
    assert_eq!(
        env.json(&["vm", "list", "--json"]),
        serde_json::json!([]),
        "--rm deletes the vm"
    );

    // A named VM reused by vm run, exit codes passed through.
    env.ok(&["vm", "create", "--name", "codes"]);
    let out = env.run(&["vm", "run", "--name", "codes", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = env.run(&[
        "vm",
        "exec",
        "codes",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    let out = env.run(&["vm", "exec", "codes", "--", "no-such-command"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "command not found in the guest"
    );

    // stdin is streamed to the guest command.
    let mut child = env
        .cmd(&[
            "vm",
            "exec",
            "codes",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello guest\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO GUEST\ndone\n");

    // A larger output arrives whole.
    let out = env.ok(&["vm", "exec", "codes", "--", "sh", "-c", "seq 1 20000"]);
    assert_eq!(out.lines().count(), 20000);
    assert_eq!(out.lines().last(), Some("20000"));

    // The console log shows the agent coming up, and the initramfs freed
    // once the guest had a moment with nothing else to do.
    let logs = env.ok(&["vm", "logs", "codes"]);
    assert!(logs.contains("banger-agent"), "console: {logs}");
    assert!(
        wait_until(Duration::from_secs(30), || {
            env.ok(&["vm", "logs", "codes"])
                .contains("banger-agent: freed the initramfs")
        }),
        "console: {}",
        env.ok(&["vm", "logs", "codes"])
    );
    let os = env.ok(&["vm", "exec", "codes", "--", "cat", "/etc/os-release"]);
    assert!(os.contains("banger"), "{os}");
    env.ok(&["vm", "delete", "codes"]);
}

#[test]
fn stop_and_start_keep_the_work_disk() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();
    env.ok(&[
        "vm", "create", "--name", "keep", "--cpus", "1", "--memory", "256M",
    ]);
    let list = env.json(&["vm", "list", "--json"]);
    assert_eq!(list[0]["name"], "keep");
    assert_eq!(list[0]["state"], "running");
    let table = env.ok(&["vm", "list"]);
    assert!(
        table.starts_with("NAME") && table.contains("keep") && table.contains("running"),
        "{table}"
    );
    let hostname = env.ok(&["vm", "exec", "keep", "--", "hostname"]);
    assert_eq!(hostname.trim(), "keep");
    // Written just before the stop and never synced by the test: only the
    // guest's own power-off (sync, unmount) gets it onto the disk, since
    // the kernel's writeback would wait far longer than this.
    let blob = env.ok(&[
        "vm",
        "exec",
        "keep",
        "--",
        "sh",
        "-c",
        "echo precious > /root/file && head -c 4194304 /dev/urandom > /root/blob && md5sum < /root/blob",
    ]);
    env.ok(&["vm", "stop", "keep"]);
    assert_eq!(vm_json(&env, "keep")["state"], "stopped");
    // The kernel counted the same metadata overhead the grown seed recorded:
    // where they differ it writes its own count into every superblock copy
    // at the first mount (~7 ms of a fresh VM's boot under TCG).
    let work =
        std::path::PathBuf::from(vm_json(&env, "keep")["dir"].as_str().unwrap()).join("work.ext4");
    let sb = banger_image::overhead::read_superblock(&work).unwrap();
    assert_ne!(banger_image::overhead::recorded(&sb), 0);
    assert_eq!(
        Some(banger_image::overhead::recorded(&sb)),
        banger_image::overhead::overhead_clusters(&sb),
        "the work disk's recorded overhead is the kernel's"
    );
    env.ok(&["vm", "start", "keep"]);
    assert_eq!(
        env.ok(&["vm", "exec", "keep", "--", "cat", "/root/file"]),
        "precious\n",
        "a clean stop keeps what was written just before it"
    );
    assert_eq!(
        env.ok(&[
            "vm",
            "exec",
            "keep",
            "--",
            "sh",
            "-c",
            "md5sum < /root/blob"
        ]),
        blob,
        "all of it"
    );

    env.ok(&["vm", "restart", "keep"]);
    assert_eq!(
        env.ok(&["vm", "exec", "keep", "--", "cat", "/root/file"]),
        "precious\n"
    );
    let df = env.ok(&["vm", "exec", "keep", "--", "df", "-m", "/root"]);
    let size: u64 = df
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(
        (400..=512).contains(&size),
        "work disk is grown to the default 512 MiB: {df}"
    );
    // Both disks, after a restart too, leave the guest's CPU to its
    // commands: no access-time writes, no background inode-table zeroing.
    let mounts = env.ok(&["vm", "exec", "keep", "--", "cat", "/proc/mounts"]);
    for dir in ["/", "/root"] {
        let line = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(dir))
            .unwrap_or_else(|| panic!("{dir} is not mounted: {mounts}"));
        assert!(
            line.contains("noatime") && line.contains("noinit_itable"),
            "{line}"
        );
    }
    let threads = env.ok(&["vm", "exec", "keep", "--", "ps"]);
    assert!(!threads.contains("ext4lazyinit"), "{threads}");
}

#[test]
fn delete_leaves_no_process_and_no_files() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();
    env.ok(&["vm", "create", "--name", "gone"]);
    let vm = vm_json(&env, "gone");
    let pid = vm["pid"].as_u64().expect("running vm has an engine pid") as u32;
    assert!(process_alive(pid));
    let dir = std::path::PathBuf::from(vm["dir"].as_str().unwrap());
    assert!(dir.join("work.ext4").exists());

    env.ok(&["vm", "delete", "gone"]);
    assert!(!process_alive(pid), "engine process {pid} survived delete");
    assert!(!dir.exists(), "vm dir {} survived delete", dir.display());
    assert_eq!(
        files_under(&env.state_dir().join("vms")),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        files_under(&env.runtime_dir().join("vms")),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(env.json(&["vm", "list", "--json"]), serde_json::json!([]));
    let out = env.run(&["vm", "show", "gone"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no vm named \"gone\""));
}

#[test]
fn a_killed_daemon_is_restarted_and_adopts_running_vms() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();
    env.ok(&["vm", "create", "--name", "adopt"]);
    let engine_pid = vm_json(&env, "adopt")["pid"].as_u64().unwrap() as u32;
    let daemon = env.daemon_pid().expect("daemon runs");
    unsafe_kill9(daemon);
    assert!(wait_until(Duration::from_secs(5), || !process_alive(
        daemon
    )));
    assert!(
        process_alive(engine_pid),
        "the vm keeps running while the daemon is down"
    );

    // The next command starts a new daemon, which adopts the VM.
    assert_eq!(
        env.ok(&["vm", "exec", "adopt", "--", "echo", "still here"]),
        "still here\n"
    );
    assert_ne!(env.daemon_pid(), Some(daemon));
    let vm = vm_json(&env, "adopt");
    assert_eq!(
        (vm["state"].as_str(), vm["pid"].as_u64()),
        (Some("running"), Some(engine_pid as u64))
    );
    env.ok(&["vm", "delete", "adopt"]);
    assert!(!process_alive(engine_pid));
}

fn unsafe_kill9(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_failed_create_leaves_nothing_and_says_why() {
    if skip() {
        return;
    }
    // A boot timeout no guest can meet makes the create fail at "wait for agent".
    let env = Env::new(&format!("{CONFIG}boot_timeout_secs = 1\n")).with_image();
    let _permit = boot_permit();
    let out = env.run(&["vm", "create", "--name", "doomed"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not answer within 1 s") && err.contains("console"),
        "error: {err}"
    );
    assert_eq!(
        env.json(&["vm", "list", "--json"]),
        serde_json::json!([]),
        "no row left"
    );
    assert_eq!(
        files_under(&env.state_dir().join("vms")),
        Vec::<std::path::PathBuf>::new(),
        "no disks left"
    );
    assert_eq!(
        files_under(&env.runtime_dir().join("vms")),
        Vec::<std::path::PathBuf>::new(),
        "no sockets left"
    );
    let leftover = std::process::Command::new("pgrep")
        .args(["-f", &env.root.path().to_string_lossy()])
        .output()
        .unwrap();
    let pids: Vec<u32> = String::from_utf8_lossy(&leftover.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let engines: Vec<u32> = pids
        .into_iter()
        .filter(|p| process_alive(*p))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("qemu-system"))
        })
        .collect();
    assert!(engines.is_empty(), "engine processes left: {engines:?}");
}

#[test]
fn bad_input_gets_clear_errors_and_distinct_exit_codes() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG);
    let out = env.run(&["vm", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");

    let out = env.run(&["vm", "create", "--image", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image named \"nope\""));

    let out = env.run(&["vm", "create", "--name", "Bad_Name"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lowercase"));

    let out = env.run(&["vm", "create", "--memory", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--memory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = env.run(&["vm", "create", "--disk-size", "12X"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("12X"));

    assert_eq!(
        env.json(&["vm", "list", "--json"]),
        serde_json::json!([]),
        "nothing recorded by failed requests"
    );

    // daemon stop returns once the daemon has exited.
    let daemon = env.daemon_pid().expect("daemon runs");
    env.ok(&["daemon", "stop"]);
    assert!(!process_alive(daemon), "daemon stop waits for the exit");
    assert_eq!(env.run(&["daemon", "status"]).status.code(), Some(1));

    // A malformed config stops the daemon from starting, with the key named.
    std::fs::write(
        env.root.path().join("config/banger/config.toml"),
        "default_cpus = \"many\"\n",
    )
    .unwrap();
    let out = env.run(&["vm", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("default_cpus"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn doctor_reports_every_check() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let report = env.json(&["doctor", "--json"]);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "engine",
        "kvm",
        "qemu-img",
        "mkfs.ext4",
        "disk",
        "image minimal",
        "daemon",
        "debian-build",
        "privilege",
    ] {
        assert!(names.contains(&want), "doctor lacks {want}: {names:?}");
    }
    let image = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "image minimal")
        .unwrap();
    assert_eq!(image["status"], "pass");
    // A tampered image file is caught by its fingerprint.
    let rootfs = env.state_dir().join("images/minimal/rootfs.ext4");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&rootfs)
        .unwrap();
    f.write_all(b"tampered").unwrap();
    let out = env.run(&["doctor", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failing check makes doctor exit 1"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let image = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "image minimal")
        .unwrap();
    assert_eq!(image["status"], "fail");
}

/// Starts `vm exec NAME -- sh -c SCRIPT` and returns once the guest
/// process printed its first line ("started"), so it is surely running.
fn exec_started(env: &Env, vm: &str, script: &str) -> std::process::Child {
    let mut child = env
        .cmd(&["vm", "exec", vm, "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "started\n");
    child
}

#[test]
fn signals_reach_the_guest_command_and_a_vanished_client_kills_it() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();
    env.ok(&["vm", "create", "--name", "sig"]);

    // SIGTERM to the CLI is forwarded to the guest process, whose status comes back.
    let mut child = exec_started(&env, "sig", "echo started; exec sleep 300");
    let st = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(143),
        "sleep killed by SIGTERM reports 128+15"
    );

    // A client that disappears (SIGKILL, no chance to forward anything) takes its process with it.
    let mut child = exec_started(&env, "sig", "echo started; exec sleep 301");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !env
            .ok(&["vm", "exec", "sig", "--", "ps"])
            .contains("sleep 301")),
        "the guest process outlived its client"
    );
}

#[test]
fn register_validates_files_and_imports_a_bootable_image() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let img = env.state_dir().join("images/minimal");
    let (kernel, rootfs) = (img.join("vmlinux"), img.join("rootfs.ext4"));
    let k = kernel.to_string_lossy().into_owned();
    let r = rootfs.to_string_lossy().into_owned();

    // Files that are not what they claim are refused, naming the file.
    let out = env.run(&[
        "image", "register", "--name", "bad", "--kernel", &r, "--rootfs", &r,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rootfs.ext4"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.run(&[
        "image", "register", "--name", "bad", "--kernel", &k, "--rootfs", &k,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let out = env.run(&[
        "image",
        "register",
        "--name",
        "bad",
        "--kernel",
        "/nonexistent/vmlinux",
        "--rootfs",
        &r,
    ]);
    assert!(!out.status.success());
    assert!(
        env.json(&["image", "list", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["name"] != "bad"),
        "nothing half-registered"
    );

    // A real kernel and rootfs register, with fingerprints, and boot. Debian's
    // kernel builds virtio as modules: take them from the unpacked package.
    let modules = banger_e2e::kernel_modules_dir();
    let m = modules.to_string_lossy().into_owned();
    env.ok(&[
        "image",
        "register",
        "--name",
        "mine",
        "--kernel",
        &k,
        "--rootfs",
        &r,
        "--modules",
        &m,
    ]);
    let shown = env.json(&["image", "show", "mine", "--json"]);
    assert_eq!(shown["source"], "registered");
    assert!(
        shown["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "rootfs.ext4" && f["sha256"].as_str().unwrap().len() == 64)
    );
    let _permit = boot_permit();
    let out = env.run(&[
        "vm",
        "run",
        "--rm",
        "--image",
        "mine",
        "--",
        "cat",
        "/etc/os-release",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("banger"));
    env.ok(&["image", "delete", "mine"]);
    assert!(!env.state_dir().join("images/mine").exists());
}

#[test]
fn run_inside_a_git_checkout_works_in_a_copy_at_root_repo() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let repo = env.root.path().join("project");
    std::fs::create_dir_all(repo.join("src/deep")).unwrap();
    let git = |args: &[&str]| {
        let st = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join(".gitignore"), "build/\n").unwrap();
    std::fs::write(repo.join("src/deep/tracked.txt"), "committed\n").unwrap();
    git(&["add", "."]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "init",
    ]);
    std::fs::write(repo.join("src/deep/tracked.txt"), "edited, not committed\n").unwrap();
    std::fs::write(repo.join("untracked.txt"), "new\n").unwrap();
    std::fs::create_dir_all(repo.join("build")).unwrap();
    std::fs::write(repo.join("build/out.bin"), "ignored\n").unwrap();

    let _permit = boot_permit();
    let out = env
        .cmd(&[
            "vm",
            "run",
            "--rm",
            "--",
            "sh",
            "-c",
            "pwd; cat tracked.txt; cd /root/repo && find . -path ./.git -prune -o -type f -print | sort; test -f .git/HEAD && echo repository; stat -c %Y . src src/deep; exit 4",
        ])
        .current_dir(repo.join("src/deep"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (listing, dated) = stdout
        .split_once("repository\n")
        .unwrap_or_else(|| panic!("no repository in {stdout:?}"));
    assert_eq!(
        listing,
        "/root/repo/src/deep\nedited, not committed\n./.gitignore\n./src/deep/tracked.txt\n./untracked.txt\n",
        "the checkout as it is on disk, without ignored files, and the command runs where the caller stood"
    );
    // Directories are dated as a fresh clone's are, not 1970.
    let day_ago = banger_sys::clock::unix_now() - 86_400;
    let mtimes: Vec<i64> = dated.lines().map(|l| l.parse().unwrap()).collect();
    assert!(
        mtimes.len() == 3 && mtimes.iter().all(|&t| t > day_ago),
        "directory mtimes {mtimes:?}"
    );

    // Outside a checkout (or with --no-checkout) the command runs in /root.
    let out = env
        .cmd(&["vm", "run", "--rm", "--no-checkout", "--", "pwd"])
        .current_dir(&repo)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/root\n");
}

#[test]
fn an_image_builds_again_from_its_manifest() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let original = env.json(&["image", "show", "minimal", "--json"]);
    assert!(
        original["kernel_package"]
            .as_str()
            .is_some_and(|k| k.starts_with("linux-image-")),
        "{original}"
    );
    let dir = original["dir"].as_str().unwrap().to_string();
    let out = env.run(&[
        "image",
        "build",
        "--from-manifest",
        &format!("{dir}/manifest.json"),
        "--name",
        "again",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("all 1 packages at the manifest's versions"),
        "the rebuild says it matches: {stderr}"
    );
    let again = env.json(&["image", "show", "again", "--json"]);
    for field in ["source", "kernel_version", "kernel_package"] {
        assert_eq!(again[field], original[field], "{field}");
    }
    assert!(
        env.ok(&["image", "show", "again"])
            .contains("kernel package:")
    );

    // The manifest decides the inputs: flags that would change them are refused.
    let out = env.run(&[
        "image",
        "build",
        "--from-manifest",
        &dir,
        "--packages",
        "vim",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--packages"));
    let out = env.run(&["image", "build", "--from-manifest", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
    let out = env.run(&["image", "build", "--from-manifest", &dir]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists: pass --force"),
        "the manifest's name is the default and is not overwritten"
    );
}
