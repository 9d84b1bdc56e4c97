//! End-to-end: concurrent requests on a fresh instance, where the first
//! creates also make what is made once on first use (the ssh key pair, the
//! work seed grown to the requested size). Every name ends with exactly one
//! running VM and the only refusal is "already exists"; concurrent deletes
//! of one name succeed once and the other says why.

use banger_e2e::{Env, boot_permit, skip};
use std::collections::BTreeMap;
use std::process::Output;

const CONFIG: &str = "default_memory_mib = 128\ndefault_disk_size_mib = 256\nnetwork = \"none\"\ndefault_image = \"minimal\"\n";

const NAMES: [&str; 2] = ["race-a", "race-b"];

/// Runs `args_of(i)` for i in 0..n at once and returns each result with i.
fn all_at_once(env: &Env, n: usize, args_of: impl Fn(usize) -> Vec<String> + Sync) -> Vec<Output> {
    let start = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (args_of, start) = (&args_of, &start);
                s.spawn(move || {
                    let args = args_of(i);
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    start.wait();
                    env.run(&args)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn concurrent_creates_on_a_fresh_instance_give_one_vm_per_name() {
    if skip() {
        return;
    }
    let env = Env::new(CONFIG).with_image();
    let state = env.state_dir();
    assert!(
        !state.join("ssh/id_ed25519").exists(),
        "a fresh instance has no ssh key yet"
    );
    let _permit = boot_permit();

    // Two creates per name: the first of each makes the key pair and the
    // grown work seed at the same moment as the other name's.
    let name_of = |i: usize| NAMES[i % NAMES.len()];
    let creates = all_at_once(&env, 4, |i| {
        ["vm", "create", "--name", name_of(i)]
            .map(String::from)
            .to_vec()
    });
    let mut wins: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, out) in creates.iter().enumerate() {
        if out.status.success() {
            *wins.entry(name_of(i)).or_default() += 1;
        } else {
            let err = stderr(out);
            assert!(
                err.contains("already exists"),
                "the only refusal is a name taken: {err}"
            );
        }
    }
    assert_eq!(
        wins,
        NAMES.iter().map(|n| (*n, 1)).collect(),
        "one create per name wins"
    );
    let vms = env.json(&["vm", "list", "--json"]);
    let mut running: Vec<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["state"] == "running")
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    running.sort();
    assert_eq!(running, NAMES, "{vms}");
    assert!(state.join("ssh/id_ed25519.pub").exists());

    // Two deletes per name: one succeeds, the other says why it did not.
    let deletes = all_at_once(&env, 4, |i| {
        ["vm", "delete", name_of(i)].map(String::from).to_vec()
    });
    let mut deleted: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, out) in deletes.iter().enumerate() {
        let err = stderr(out);
        assert!(!err.contains("database is locked"), "{err}");
        if out.status.success() {
            *deleted.entry(name_of(i)).or_default() += 1;
        } else {
            assert!(
                err.contains("no vm named") || err.contains("was deleted by another request"),
                "the second delete says why: {err}"
            );
        }
    }
    assert_eq!(deleted, NAMES.iter().map(|n| (*n, 1)).collect());
    assert_eq!(env.json(&["vm", "list", "--json"]), serde_json::json!([]));
}
