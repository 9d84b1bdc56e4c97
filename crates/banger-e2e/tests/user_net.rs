//! End-to-end user-mode networking served by passt: a guest does not reach
//! the host's loopback (a listener on 127.0.0.1 is refused through the
//! gateway 10.0.2.2) unless it was created with `--host-access`; each VM
//! runs its own passt, which goes with the VM. Egress to the outside is not
//! tested: this host may have none. Published ports and `vm ssh` through
//! passt are covered by `network` (part 1) and `unprivileged`.

use banger_e2e::{Env, boot_permit, skip, wait_until};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Command lines of live passt processes serving this env's VMs.
fn passts_of(env: &Env) -> Vec<String> {
    let run = env.runtime_dir().to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|c| {
            let program = c.split(' ').next().unwrap_or_default();
            program
                .rsplit('/')
                .next()
                .is_some_and(|p| p.starts_with("passt"))
                && c.contains(&run)
        })
        .collect()
}

/// Kills the test's listener when dropped.
struct Listener(std::process::Child);

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_user_mode_guest_reaches_the_host_loopback_only_with_host_access() {
    if skip() {
        return;
    }
    for tool in ["passt", "python3"] {
        if banger_e2e::which(tool).is_none() {
            banger_sys::skip_test(&format!("{tool} is not installed (apt-get install {tool})"));
            return;
        }
    }
    let env = Env::new("network = \"user\"\ndefault_memory_mib = 256\n");
    let _permit = boot_permit();
    env.ok(&["image", "build", "--preset", "minimal"]);

    let www = env.root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "host-secret\n").unwrap();
    let port = banger_e2e::free_port();
    let _server = Listener(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || env
            .http_get(port)
            .is_some_and(|r| r.contains("host-secret"))),
        "the test's listener is up"
    );
    let probe = |vm: &str| env.guest_http_get(vm, "10.0.2.2", port);

    env.ok(&["vm", "create", "--name", "shut", "--image", "minimal"]);
    assert_eq!(passts_of(&env).len(), 1, "{:?}", passts_of(&env));
    assert_eq!(
        probe("shut"),
        None,
        "a user-mode guest cannot reach the host's loopback"
    );

    env.ok(&[
        "vm",
        "create",
        "--name",
        "open",
        "--image",
        "minimal",
        "--host-access",
    ]);
    let reached = probe("open");
    assert!(
        reached
            .as_deref()
            .is_some_and(|r| r.contains("host-secret")),
        "--host-access opens it: {reached:?}"
    );
    assert_eq!(probe("shut"), None, "for that guest only");
    let passts = passts_of(&env);
    assert_eq!(passts.len(), 2, "{passts:?}");
    assert_eq!(
        passts.iter().filter(|c| c.contains("--no-map-gw")).count(),
        1,
        "{passts:?}"
    );

    env.ok(&["vm", "stop", "shut"]);
    assert!(
        wait_until(Duration::from_secs(5), || passts_of(&env).len() == 1),
        "a stopped vm's passt goes: {:?}",
        passts_of(&env)
    );
    env.ok(&["vm", "start", "shut"]);
    assert_eq!(probe("shut"), None, "and a restarted one is shut again");
    env.ok(&["vm", "delete", "shut", "open"]);
    assert!(
        wait_until(Duration::from_secs(5), || passts_of(&env).is_empty()),
        "no passt outlives its vm: {:?}",
        passts_of(&env)
    );
}
