//! A full host disk, as a user meets it: the instance's state dir on a
//! small filesystem (a 300 MB tmpfs the test mounts; root needed) and a
//! guest that writes more than fits. The guest is paused by its engine,
//! not failed, and shown `paused: host disk full` at once; its exec is
//! refused saying why instead of hanging; creates and image builds fail
//! saying the disk is full and leave nothing; another VM is shown as it
//! is (answering while it needs no new blocks, else paused the same way);
//! `vm stop` and `vm delete` work on the full disk; and once space is
//! freed the guest runs on and finishes its write, nothing lost.

use banger_e2e::{Env, boot_permit, files_under, skip_unless_root_with, wait_until};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const CONFIG: &str = "default_memory_mib = 256\ndefault_disk_size_mib = 512\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

/// A tmpfs mounted over a directory, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: PathBuf, size: &str) -> SmallFs {
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount a tmpfs on {}", dir.display());
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_mib(dir: &std::path::Path) -> u64 {
    banger_sys::process::free_bytes(dir).unwrap() >> 20
}

fn vm<'a>(list: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    list.as_array()?.iter().find(|v| v["name"] == name)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_full_disk_pauses_the_writer_refuses_new_work_clearly_and_everything_recovers() {
    if skip_unless_root_with("a small filesystem for the state dir", &["mount", "umount"]) {
        return;
    }
    // The long pass: BANGER_FULL_DISK_SOAK=N more fill, pause, free,
    // resume cycles on the same VM, each write intact (each takes up to
    // 60 MiB of the disk for good: the guest's freed blocks stay the
    // host's, so the disk grows with them).
    let soak: usize = std::env::var("BANGER_FULL_DISK_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let env = Env::new(CONFIG);
    // Declared after `env`: unmounted before the env's files go.
    let size = format!("{}m", 300 + 80 * soak.min(CYCLES_PER_VM));
    let _fs = SmallFs::mount(env.root.path().join("state"), &size);
    // Not `with_image`, which would move `env` into a binding dropped
    // before `_fs`: its files would go while the mount is still there.
    env.ok(&["image", "build", "--preset", "minimal"]);
    let state = env.state_dir();
    {
        let _permit = boot_permit();
        env.ok(&["vm", "create", "--name", "writer"]);
    }
    {
        let _permit = boot_permit();
        env.ok(&["vm", "create", "--name", "idle"]);
    }
    // The writer fills the disk but for what a host file (freed later) holds.
    let filler = state.join("filler");
    let room = free_mib(&state);
    assert!(room > 150, "{room} MiB free after two vms");
    let st = Command::new("fallocate")
        .args(["-l", &format!("{}M", room - 60)])
        .arg(&filler)
        .status()
        .unwrap();
    assert!(st.success());

    let writer = {
        let mut c = env.cmd(&[
            "vm",
            "exec",
            "writer",
            "--",
            "sh",
            "-c",
            "dd if=/dev/zero of=/root/big bs=1M count=100 conv=fsync 2>&1 && md5sum /root/big",
        ]);
        c.stdout(std::process::Stdio::piped());
        c.stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };

    // Paused, and shown so, soon after the disk fills.
    let mut list = serde_json::Value::Null;
    // The 100 MB write, under TCG on a loaded host, can take minutes to
    // reach the full disk.
    let paused = wait_until(Duration::from_secs(180), || {
        list = env.json(&["vm", "list", "--json"]);
        vm(&list, "writer").is_some_and(|v| v["state"] == "paused")
    });
    assert!(paused, "the writer is shown paused: {list}");
    assert_eq!(vm(&list, "writer").unwrap()["paused"], "host disk full");
    assert!(free_mib(&state) < 2, "the disk is full");
    let table = env.ok(&["vm", "list"]);
    assert!(table.contains("paused: host disk full"), "{table}");

    // Work that needs the guest is refused at once, saying why.
    let t0 = Instant::now();
    let out = env.run(&["vm", "exec", "writer", "--", "true"]);
    assert!(!out.status.success());
    assert!(t0.elapsed() < Duration::from_secs(5), "refused, not hung");
    let err = stderr(&out);
    assert!(
        err.contains("paused (host disk full)") && err.contains("free space"),
        "{err}"
    );

    // The other VM is shown as it is: a guest that writes nothing new
    // answers; one that does (the kernel's lazy ext4 init, a journal
    // commit) is held like the writer.
    let idle = vm(&env.json(&["vm", "list", "--json"]), "idle")
        .unwrap()
        .clone();
    match idle["state"].as_str().unwrap() {
        "running" => {
            assert_eq!(
                env.ok(&["vm", "exec", "idle", "--", "echo", "alive"])
                    .trim(),
                "alive"
            );
            // A snapshot (its RAM goes to this disk) is refused up front.
            let out = env.run(&["vm", "snapshot", "idle"]);
            assert!(!out.status.success());
            let err = stderr(&out);
            assert!(
                err.contains("full") && err.contains("taking a snapshot"),
                "{err}"
            );
        }
        "paused" => assert_eq!(idle["paused"], "host disk full"),
        other => panic!("the idle vm is {other}: {idle}"),
    }

    // A create fails saying the disk is full, leaving nothing behind.
    let vms_before = files_under(&state.join("vms"));
    let out = env.run(&["vm", "create", "--name", "late"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("disk") && err.contains("full"), "{err}");
    assert!(
        vm(&env.json(&["vm", "list", "--json"]), "late").is_none(),
        "no row"
    );
    assert_eq!(files_under(&state.join("vms")), vms_before, "no files");

    // So does an image build, leaving no staging directory.
    let images_before = std::fs::read_dir(state.join("images")).unwrap().count();
    let out = env.run(&["image", "build", "--preset", "minimal", "--name", "second"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("disk") && err.contains("full"), "{err}");
    assert_eq!(
        std::fs::read_dir(state.join("images")).unwrap().count(),
        images_before,
        "nothing partial under images"
    );

    // Stop and delete work on the full disk (they free space).
    env.ok(&["vm", "stop", "idle"]);
    env.ok(&["vm", "delete", "idle"]);
    assert!(vm(&env.json(&["vm", "list", "--json"]), "idle").is_none());

    // Room again: the writer runs on by itself and its write completes.
    std::fs::remove_file(&filler).unwrap();
    let resumed = wait_until(Duration::from_secs(30), || {
        vm(&env.json(&["vm", "list", "--json"]), "writer").is_some_and(|v| v["state"] == "running")
    });
    assert!(resumed, "the writer runs again once there is room");
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the guest's write completed: {}",
        stderr(&out)
    );
    let md5 = String::from_utf8_lossy(&out.stdout);
    assert!(
        md5.contains("2f282b84e7e608d5852449ed940bfc51"),
        "100 MiB of zeros, intact: {md5}"
    );

    for i in 0..soak {
        eprintln!("full-disk soak {i}/{soak}");
        if i > 0 && i % CYCLES_PER_VM == 0 {
            // A fresh writer: the old one's disk has grown by every cycle.
            env.ok(&["vm", "delete", "writer"]);
            let _permit = boot_permit();
            env.ok(&["vm", "create", "--name", "writer"]);
        }
        cycle(&env, &filler, i);
    }
    env.ok(&["vm", "delete", "writer"]);
}

/// Soak cycles on one writer: each writes a new 60 MiB file, which its
/// 512 MiB work disk holds six times besides the first 100 MiB.
const CYCLES_PER_VM: usize = 5;

/// Fills the disk but for 30 MiB, has the writer write 60 MiB to a new
/// file (new blocks: a rewrite of freed ones needs no host space), checks
/// it is held and refused, frees the filler, and checks the write completes.
fn cycle(env: &Env, filler: &std::path::Path, i: usize) {
    let state = env.state_dir();
    let room = free_mib(&state);
    let st = Command::new("fallocate")
        .args(["-l", &format!("{}M", room.saturating_sub(30))])
        .arg(filler)
        .status()
        .unwrap();
    assert!(st.success());
    let writer = env
        .cmd(&[
            "vm", "exec", "writer", "--", "sh", "-c",
            &format!("dd if=/dev/zero of=/root/big{i} bs=1M count=60 conv=fsync 2>/dev/null && md5sum /root/big{i}"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let paused = wait_until(Duration::from_secs(60), || {
        vm(&env.json(&["vm", "list", "--json"]), "writer").is_some_and(|v| v["state"] == "paused")
    });
    assert!(paused, "held on the full disk");
    assert!(
        !env.run(&["vm", "exec", "writer", "--", "true"])
            .status
            .success()
    );
    std::fs::remove_file(filler).unwrap();
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("76c136bc0d680abd978d9934070c01e5"),
        "60 MiB of zeros, intact: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
