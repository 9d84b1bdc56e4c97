//! End-to-end: the agent workflow on a real Debian guest (built on first
//! use), through the real CLI and daemon: a workspace that is a real git
//! checkout (history, HEAD, the host's uncommitted edits, a submodule in
//! full_copy), commits coming back as a host branch and as patches, git
//! identity and its precedence, file sync from the config (and each bad
//! shape refused by name), sessions that outlive a killed daemon, and `cp`
//! of a tree with modes and a symlink both ways.

use banger_e2e::{Env, boot_permit, process_alive, skip, wait_until};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const CONFIG: &str = "default_memory_mib = 512\ndefault_disk_size_mib = 1024\nnetwork = \"none\"\ndefault_image = \"debian\"\n";

/// A test banger whose daemon runs with `home` as its HOME (where the
/// global git identity and `~/` of file sync live).
struct Bench {
    env: Env,
    home: PathBuf,
}

impl Bench {
    fn new(config: &str) -> Bench {
        let env = Env::new(config);
        let home = env.root.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        Bench { env, home }
    }

    fn cmd(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = self.env.cmd(args);
        c.current_dir(dir).env("HOME", &self.home);
        c
    }

    fn run(&self, dir: &Path, args: &[&str]) -> Output {
        let out = self.cmd(dir, args).output().unwrap();
        eprintln!(
            "$ banger {} -> {:?}\n{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        out
    }

    fn ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run(dir, args);
        assert!(
            out.status.success(),
            "banger {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `vm exec VM -- sh -c SCRIPT`, its stdout.
    fn sh(&self, vm: &str, script: &str) -> String {
        self.ok(
            self.env.root.path(),
            &["vm", "exec", vm, "--", "sh", "-c", script],
        )
    }
}

fn git(dir: &Path, home: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository with two commits, a repo-level identity, an ignored build
/// dir, a submodule, an uncommitted edit and an untracked file.
fn project(root: &Path, home: &Path) -> PathBuf {
    let sub = root.join("lib-sub");
    std::fs::create_dir_all(&sub).unwrap();
    git(&sub, home, &["init", "-q", "-b", "main"]);
    std::fs::write(sub.join("lib.txt"), "library\n").unwrap();
    git(&sub, home, &["add", "."]);
    git(&sub, home, &["commit", "-qm", "lib"]);

    let repo = root.join("project");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    git(&repo, home, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join(".gitignore"), "build/\n").unwrap();
    std::fs::write(repo.join("src/main.txt"), "one\n").unwrap();
    std::fs::write(
        repo.join("Makefile"),
        "test:\n\t@echo make test in $(CURDIR)\n\t@exit 3\n",
    )
    .unwrap();
    git(&repo, home, &["add", "."]);
    git(&repo, home, &["commit", "-qm", "first commit"]);
    std::fs::write(repo.join("src/main.txt"), "two\n").unwrap();
    git(&repo, home, &["commit", "-qam", "second commit"]);
    git(
        &repo,
        home,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            sub.to_str().unwrap(),
            "vendor/lib",
        ],
    );
    git(&repo, home, &["commit", "-qm", "add submodule"]);
    std::fs::write(repo.join("src/main.txt"), "three, uncommitted\n").unwrap();
    std::fs::write(repo.join("notes.txt"), "untracked\n").unwrap();
    std::fs::create_dir_all(repo.join("build")).unwrap();
    std::fs::write(repo.join("build/out.bin"), "ignored\n").unwrap();
    repo
}

#[test]
fn a_workspace_is_a_real_checkout_and_its_commits_come_back() {
    if skip() {
        return;
    }
    let b = Bench::new(&format!(
        "{CONFIG}[[file_sync]]\nhost = \"~/.config/tool/auth.json\"\nguest = \"~/.config/tool/auth.json\"\nmode = \"0640\"\n\
         [[file_sync]]\nhost = \"~/.aws\"\nguest = \"~/.aws\"\n\
         [[file_sync]]\nhost = \"~/missing\"\nguest = \"~/missing\"\n"
    ));
    let home = b.home.clone();
    git(
        &home,
        &home,
        &["config", "--global", "user.name", "Global Person"],
    );
    git(
        &home,
        &home,
        &["config", "--global", "user.email", "global@example.com"],
    );
    std::fs::create_dir_all(home.join(".config/tool")).unwrap();
    std::fs::write(home.join(".config/tool/auth.json"), "{\"token\":1}").unwrap();
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(home.join(".aws/credentials"), "[default]\n").unwrap();
    std::fs::set_permissions(
        home.join(".aws/credentials"),
        std::fs::Permissions::from_mode(0o604),
    )
    .unwrap();
    let repo = project(b.env.root.path(), &home);
    git(&repo, &home, &["config", "user.name", "Repo Person"]);
    let host_status = git(&repo, &home, &["status", "--porcelain"]);

    let _permit = boot_permit();
    // vm run inside the checkout: history, HEAD and the uncommitted edits.
    let out = b.ok(
        &repo.join("src"),
        &[
            "vm",
            "run",
            "--name",
            "work",
            "--",
            "sh",
            "-c",
            "pwd; git log --format=%s; git rev-parse HEAD; git status --porcelain; cat main.txt",
        ],
    );
    let head = git(&repo, &home, &["rev-parse", "HEAD"]);
    let expected = format!(
        "/root/repo/src\nadd submodule\nsecond commit\nfirst commit\n{head}{host_status}three, uncommitted\n"
    );
    assert_eq!(out, expected, "the guest's checkout is the host's");

    // The README's first line: `vm run -- make test` at the checkout's top
    // runs make there (the image has it) and exits with make's code.
    let out = b.run(
        &repo,
        &["vm", "run", "--name", "work", "--", "make", "test"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "make test in /root/repo\n"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Error 3"),
        "make's own complaint reaches the terminal"
    );
    assert_eq!(out.status.code(), Some(2), "make's exit code is vm run's");

    // File sync: a file with its mode, a directory with its files' modes,
    // a missing host path skipped.
    let synced = b.sh(
        "work",
        "stat -c '%a %n' .config/tool/auth.json .aws/credentials; cat .config/tool/auth.json; ls -a ~ | grep -c missing || true",
    );
    assert_eq!(
        synced,
        "640 .config/tool/auth.json\n604 .aws/credentials\n{\"token\":1}0\n"
    );

    // Identity: the global one in /root/.gitconfig, the repo's in its checkout.
    assert_eq!(
        b.sh("work", "git config --global user.name"),
        "Global Person\n"
    );
    assert_eq!(
        b.sh(
            "work",
            "cd /root/repo && git config user.name && git config user.email"
        ),
        "Repo Person\nglobal@example.com\n"
    );
    // A restore brings the host's identity of now, not the snapshot's,
    // into a config the user made their own (edited by git, the rest kept).
    b.sh("work", "git config --global alias.co checkout");
    b.ok(
        b.env.root.path(),
        &["vm", "snapshot", "work", "--name", "named"],
    );
    git(
        &home,
        &home,
        &["config", "--global", "user.name", "Renamed Person"],
    );
    b.ok(b.env.root.path(), &["vm", "restore", "work", "named"]);
    b.ok(
        b.env.root.path(),
        &["vm", "snapshot", "delete", "work", "named"],
    );
    assert_eq!(
        b.sh(
            "work",
            "git config --global user.name; git config --global alias.co"
        ),
        "Renamed Person\ncheckout\n"
    );
    git(
        &home,
        &home,
        &["config", "--global", "user.name", "Global Person"],
    );

    // A commit in the guest comes back as a host branch, author and all;
    // the host's work tree and branch are untouched.
    b.sh(
        "work",
        "cd /root/repo && echo guest > guest.txt && git add guest.txt && git commit -qm 'made in the guest'",
    );
    b.ok(
        b.env.root.path(),
        &[
            "vm",
            "workspace",
            "export",
            "work",
            "--branch",
            "agent/work",
        ],
    );
    assert_eq!(
        git(
            &repo,
            &home,
            &["log", "-1", "--format=%s|%an", "agent/work"]
        ),
        "made in the guest|Repo Person\n"
    );
    assert_eq!(
        git(&repo, &home, &["rev-parse", "--abbrev-ref", "HEAD"]),
        "main\n"
    );
    assert_eq!(git(&repo, &home, &["status", "--porcelain"]), host_status);
    let again = b.run(
        b.env.root.path(),
        &[
            "vm",
            "workspace",
            "export",
            "work",
            "--branch",
            "agent/work",
        ],
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "an existing branch is refused with what to do"
    );
    // A patch series, with the guest's uncommitted work as a last commit.
    b.sh("work", "cd /root/repo && echo wip >> guest.txt");
    let patch = b.env.root.path().join("out.patch");
    b.ok(
        b.env.root.path(),
        &[
            "vm",
            "workspace",
            "export",
            "work",
            "--patch",
            patch.to_str().unwrap(),
            "--include-uncommitted",
        ],
    );
    let text = std::fs::read_to_string(&patch).unwrap();
    assert!(
        text.contains("Subject: [PATCH 1/2] made in the guest"),
        "{text}"
    );
    assert!(text.contains("Uncommitted changes from the guest") && text.contains("+wip"));

    // A shallow workspace: only the last commit, the same HEAD and status.
    b.ok(
        &repo,
        &[
            "vm",
            "workspace",
            "prepare",
            "work",
            "--from",
            ".",
            "--depth",
            "1",
        ],
    );
    assert_eq!(
        b.sh(
            "work",
            "cd /root/repo && git rev-list --count HEAD && git rev-parse HEAD && git status --porcelain"
        ),
        format!("1\n{head}{host_status}"),
        "one commit of history, the host's HEAD and edits"
    );

    // full_copy: ignored files and the submodule's files too.
    b.ok(
        &repo,
        &[
            "vm",
            "workspace",
            "prepare",
            "work",
            "--from",
            ".",
            "--mode",
            "full_copy",
            "--exclude",
            "notes.txt",
        ],
    );
    assert_eq!(
        b.sh("work", "cd /root/repo && cat build/out.bin vendor/lib/lib.txt; test -e notes.txt || echo excluded"),
        "ignored\nlibrary\nexcluded\n"
    );
    // A prepare that cannot finish keeps the previous copy.
    let bad = b.run(
        &repo,
        &[
            "vm",
            "workspace",
            "prepare",
            "work",
            "--from",
            "/nonexistent",
        ],
    );
    assert!(!bad.status.success());
    assert_eq!(b.sh("work", "cat /root/repo/build/out.bin"), "ignored\n");

    // cp: a tree with modes and a symlink, there and back.
    let tree = b.env.root.path().join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("bin/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        tree.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::write(tree.join("secret"), "s").unwrap();
    std::fs::set_permissions(tree.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("bin/run.sh", tree.join("link")).unwrap();
    let root = b.env.root.path();
    b.ok(
        root,
        &["vm", "cp", "-r", tree.to_str().unwrap(), "work:/root/tree"],
    );
    assert_eq!(
        b.sh(
            "work",
            "cd /root/tree && stat -c '%a %n' bin/run.sh secret && readlink link && ./link"
        ),
        "750 bin/run.sh\n600 secret\nbin/run.sh\nhi\n"
    );
    let back = root.join("back");
    b.ok(
        root,
        &["vm", "cp", "-r", "work:/root/tree", back.to_str().unwrap()],
    );
    let mode = |p: &str| {
        std::fs::metadata(back.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!((mode("bin/run.sh"), mode("secret")), (0o750, 0o600));
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        Path::new("bin/run.sh")
    );
    let refused = b.run(
        root,
        &[
            "vm",
            "cp",
            "work:/root/tree",
            root.join("x").to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("-r"));

    // Sessions: started, detached, the daemon killed, still there.
    b.ok(
        root,
        &[
            "vm",
            "session",
            "start",
            "work",
            "--name",
            "build",
            "--cwd",
            "/root/repo",
            "--",
            "sh",
            "-c",
            "echo started in $(pwd); while read l; do echo got $l; done",
        ],
    );
    let missing = b.run(
        root,
        &[
            "vm", "session", "start", "work", "--name", "bad", "--cwd", "/nope", "--", "true",
        ],
    );
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/nope"),
        "the preflight names the missing cwd"
    );
    kill_daemon(&b.env);
    let list = b.ok(root, &["vm", "session", "list", "work", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let by = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by("build")["state"], "running");
    assert_eq!(by("bad")["state"], "failed");
    // Attach, say something, see it answered after the scrollback, detach.
    let mut attach = b
        .cmd(root, &["vm", "session", "attach", "work", "build"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        writeln!(attach.stdin.as_mut().unwrap(), "hello").unwrap();
    }
    let mut lines = BufReader::new(attach.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started in /root/repo");
    assert_eq!(lines.next().unwrap().unwrap(), "got hello");
    // The daemon killed under the attached client: it says the session
    // runs on and how to attach again.
    kill_daemon(&b.env);
    let (status, err) = ended(&mut attach);
    assert_eq!(status.code(), Some(125), "{err}");
    assert!(
        err.contains(
            "the session runs on: attach again with `banger vm session attach work build`"
        ),
        "{err}"
    );
    let logs = b.ok(root, &["vm", "session", "logs", "work", "build"]);
    assert_eq!(logs, "started in /root/repo\ngot hello\n");
    // Following the logs when the daemon dies: said so, and how to go on.
    let mut follow = b
        .cmd(
            root,
            &["vm", "session", "logs", "work", "build", "--follow"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started in /root/repo");
    kill_daemon(&b.env);
    let (status, err) = ended(&mut follow);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("the session runs on: `banger vm session logs work build --follow`"),
        "{err}"
    );
    let stopped = b.ok(root, &["vm", "session", "list", "work", "--json"]);
    assert!(stopped.contains("\"running\""), "detaching did not stop it");
    b.ok(root, &["vm", "session", "stop", "work", "build"]);
    // After a restart the agent has forgotten it; banger has not.
    b.ok(root, &["vm", "restart", "work"]);
    let list: serde_json::Value =
        serde_json::from_str(&b.ok(root, &["vm", "session", "list", "work", "--json"])).unwrap();
    let build = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "build")
        .unwrap();
    assert_eq!(build["state"], "ended");

    b.ok(root, &["vm", "delete", "work"]);
}

/// SIGKILLs `env`'s daemon and waits until it is gone.
fn kill_daemon(env: &Env) {
    let daemon = env.daemon_pid().unwrap();
    Command::new("kill")
        .args(["-9", &daemon.to_string()])
        .status()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || !process_alive(
        daemon
    )));
}

/// `child`'s exit status and all it wrote to its (piped) stderr.
fn ended(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    let err = banger_e2e::stderr_of(child);
    (child.wait().unwrap(), err)
}

#[test]
fn file_sync_entries_of_a_bad_shape_are_refused_by_index() {
    if skip() {
        return;
    }
    for (entry, words) in [
        ("host = \"\"\nguest = \"~/a\"", "file_sync[0].host"),
        ("host = \"rel\"\nguest = \"~/a\"", "relative"),
        ("host = \"~/a\"\nguest = \"/etc/a\"", "file_sync[0].guest"),
        ("host = \"~/../a\"\nguest = \"~/a\"", ".."),
        ("host = \"~bob/a\"\nguest = \"~/a\"", "~user"),
        (
            "host = \"~/a\"\nguest = \"~/a\"\nmode = \"rwx\"",
            "file_sync[0].mode",
        ),
    ] {
        let env = Env::new(&format!("{CONFIG}[[file_sync]]\n{entry}\n"));
        let out = env.run(&["vm", "list"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{entry}");
        assert!(err.contains(words), "{entry}: {err}");
    }
}
