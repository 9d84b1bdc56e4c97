//! End-to-end networking and SSH: a Debian guest (sshd, git, python3) in
//! user mode — no privileges — reached through loopback forwards and the
//! system `ssh`, and through the agent channel when there is no route.
//! Traffic goes only to 127.0.0.1 on the host.

use banger_e2e::{Env, boot_permit, skip, wait_until};
use std::io::{Read, Write};
use std::time::Duration;

fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn debian_guest_in_user_mode_has_ssh_and_published_ports() {
    if skip() {
        return;
    }
    if banger_e2e::which("mmdebstrap").is_none()
        && std::env::var("BANGER_E2E_REQUIRED").as_deref() != Ok("1")
    {
        eprintln!("SKIPPED: mmdebstrap is not installed (run the README's setup command)");
        return;
    }
    let env = Env::new("network = \"user\"\ndefault_memory_mib = 512\n");
    // First use builds the default (debian) image inside the create, with progress.
    let _permit = boot_permit();
    let port = banger_e2e::free_port();
    let publish = format!("{port}:8000");
    let out = env.run(&["vm", "create", "--name", "api", "--publish", &publish]);
    assert!(
        out.status.success(),
        "create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("mmdebstrap") || progress.contains("Debian"),
        "the image build showed its stages: {progress}"
    );
    assert_eq!(env.json(&["image", "list", "--json"])[0]["name"], "debian");

    // ssh with the system client, through the loopback forward; exit codes come back.
    let out = env.run(&["vm", "ssh", "api", "--", "git", "--version"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("git version"));
    let out = env.run(&["vm", "ssh", "api", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let out = env.run(&["vm", "ssh", "api", "--", "echo", "two words"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "two words\n",
        "arguments keep their quoting"
    );

    // Each VM has its own sshd host keys, made at first boot.
    let keys = env.ok(&[
        "vm",
        "exec",
        "api",
        "--",
        "sh",
        "-c",
        "ls /etc/ssh/ssh_host_*_key",
    ]);
    assert!(keys.contains("ssh_host_ed25519_key"), "{keys}");

    // A published port reaches a server in the guest.
    env.ok(&["vm", "exec", "api", "--", "sh", "-c", "cd /tmp && echo hello-from-guest > index.html && (setsid python3 -m http.server 8000 >/dev/null 2>&1 &)"]);
    assert!(
        wait_until(Duration::from_secs(20), || http_get(port)
            .is_some_and(|r| r.contains("hello-from-guest"))),
        "127.0.0.1:{port} did not reach the guest's port 8000"
    );

    // ssh-config names the VM and its forward.
    let cfg = env.ok(&["vm", "ssh-config"]);
    assert!(
        cfg.contains("Host api") && cfg.contains("HostName 127.0.0.1"),
        "{cfg}"
    );

    // Without a route (network none) ssh still works, through the agent channel.
    env.ok(&["vm", "create", "--name", "island", "--network", "none"]);
    let out = env.run(&["vm", "ssh", "island", "--", "hostname"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "island\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ok(&["vm", "delete", "island", "api"]);
    assert!(http_get(port).is_none(), "the forward is gone with the vm");
}
