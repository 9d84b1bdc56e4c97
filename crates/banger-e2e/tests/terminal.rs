//! End-to-end: `vm exec -t` under a real pseudo-terminal. tmux owns the
//! terminal: a detached session of a fixed size runs `banger vm exec -t`,
//! keys go in with `send-keys`, the screen comes back with `capture-pane`,
//! and `resize-window` changes the size the way a user's window would.
//! Needs tmux; without it the test is skipped (a failure when
//! `BANGER_E2E_REQUIRED=1`).

use banger_e2e::{Env, boot_permit, skip, which};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const CONFIG: &str = "default_memory_mib = 256\ndefault_disk_size_mib = 512\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

/// Says why tmux is needed and returns true, or fails where CI demands it.
fn skip_without_tmux() -> bool {
    if which("tmux").is_some() {
        return false;
    }
    banger_sys::skip_test(
        "tmux is not installed (apt-get install tmux): the terminal test drives vm exec -t under it",
    );
    true
}

/// A tmux server on its own socket (so no one else's sessions are
/// touched), killed when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `line` and Enter into the pane.
    fn type_line(&self, line: &str) {
        self.ok(&["send-keys", "-t", "t", "-l", line]);
        self.ok(&["send-keys", "-t", "t", "Enter"]);
    }

    fn screen(&self) -> String {
        self.ok(&["capture-pane", "-p", "-t", "t"])
    }

    /// Polls the screen until it shows `text` or `timeout` passes.
    fn wait_for(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.screen().contains(text) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// A script for tmux to start in a pane: runs `banger ARGS` with the env's
/// environment, then writes to `status` its exit status and whether the
/// terminal's settings are what they were before (`restored`) or not.
fn wrapper(env: &Env, args: &[&str], status: &Path) -> PathBuf {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let cmd = env.cmd(args);
    let mut script = String::from("#!/bin/sh\nbefore=$(stty -g)\n");
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            script.push_str(&format!(
                "export {}={}\n",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    script.push_str(&quote(&cmd.get_program().to_string_lossy()));
    for arg in cmd.get_args() {
        script.push(' ');
        script.push_str(&quote(&arg.to_string_lossy()));
    }
    script.push_str(&format!(
        "\ncode=$?\n[ \"$(stty -g)\" = \"$before\" ] && tty=restored || tty=changed\necho \"$code $tty\" > {}\n",
        quote(&status.to_string_lossy())
    ));
    let path = env.root.path().join("exec-t.sh");
    std::fs::write(&path, script).unwrap();
    path
}

#[test]
fn exec_t_sees_the_terminal_size_and_its_resize_and_passes_the_exit_code() {
    if skip() || skip_without_tmux() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let _permit = boot_permit();
    env.ok(&["vm", "create", "--name", "term"]);

    let status = env.root.path().join("status");
    let script = wrapper(&env, &["vm", "exec", "-t", "term", "--", "sh"], &status);
    let tmux = Tmux {
        socket: env.root.path().join("tmux.sock"),
    };
    let command = format!("sh {}", script.display());
    tmux.ok(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "80",
        "-y",
        "24",
        &command,
    ]);

    // The echo's own line shows `size=$(...)`, so only its output matches.
    let ask = "echo \"size=$(stty size)\"";
    tmux.type_line(ask);
    assert!(
        tmux.wait_for("size=24 80", Duration::from_secs(60)),
        "the guest's terminal is not 24x80 at the start:\n{}",
        tmux.screen()
    );

    tmux.ok(&["resize-window", "-t", "t", "-x", "100", "-y", "30"]);
    // SIGWINCH and the typed line race to the guest; ask until it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let resized = loop {
        tmux.type_line(ask);
        if tmux.wait_for("size=30 100", Duration::from_secs(3)) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(
        resized,
        "the guest did not see the window resized to 30x100:\n{}",
        tmux.screen()
    );

    tmux.type_line("exit 3");
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Ok(code) = std::fs::read_to_string(&status)
            && code.ends_with('\n')
        {
            break Some(code.trim().to_string());
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The exit status passes through, and banger left raw mode behind it.
    assert_eq!(
        code.as_deref(),
        Some("3 restored"),
        "banger vm exec -t's exit status and the terminal's settings afterwards"
    );
}
