//! Standbys on the fake engine and fake links: `image warm` leaves one
//! made ahead and paused, hidden from `vm list`; the next create that fits
//! takes it (no restore: the engine resumes the guest under the create's
//! name, DNS name included) and a new one is made; a dead standby makes
//! the create restore instead and is removed; discarding and a daemon
//! restart leave nothing of them.

use super::standby::STANDBY;
use crate::config::NetworkChoice;
use crate::testing::{Harness, Setup, finish, stage_detail as detail, succeeded};
use banger_api::{CreateVm, Operation};
use std::time::Duration;

fn harness() -> Harness {
    let mut setup = Setup::default();
    setup.config.warm_standby = true;
    setup.config.network = NetworkChoice::Bridge;
    Harness::with(setup)
}

/// Waits until the image's standby is ready (or fails the test).
async fn standby_ready(h: &Harness) -> String {
    for _ in 0..500 {
        if h.services.vms.standby_state("img") == Some("ready") {
            let standbys: Vec<String> = h
                .store
                .vms()
                .unwrap()
                .into_iter()
                .filter(|v| v.options.contains_key(STANDBY))
                .map(|v| v.name)
                .collect();
            assert_eq!(standbys.len(), 1, "one standby per image: {standbys:?}");
            return standbys[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no standby was made");
}

async fn create(h: &Harness, name: &str) -> Operation {
    let op = h.services.vms.create(CreateVm {
        name: Some(name.into()),
        ..Default::default()
    });
    finish(op.unwrap()).await
}

fn pid_of(h: &Harness, name: &str) -> u32 {
    h.services.vms.show(name).unwrap().pid.expect("it runs")
}

#[tokio::test]
async fn a_create_takes_the_paused_standby_and_a_new_one_is_made() {
    let h = harness();
    let warm = finish(h.services.vms.warm_image("img").unwrap()).await;
    assert!(succeeded(&warm));
    // `image warm` returns with the standby ready: the `vm run` after it
    // resumes one instead of waiting for it.
    assert_eq!(h.services.vms.standby_state("img"), Some("ready"));
    assert!(detail(&warm, "standby").starts_with("ready"), "{warm:?}");
    let standby = standby_ready(&h).await;
    let pid = pid_of(&h, &standby);
    assert!(h.engine.paused(pid), "a standby waits paused");
    assert!(
        h.services.vms.list().unwrap().is_empty(),
        "hidden from vm list"
    );
    assert_eq!(h.dns_names(), std::slice::from_ref(&standby));
    let restores = h.engine.restored().len();

    let op = create(&h, "w").await;
    assert!(succeeded(&op), "{op:?}");
    assert!(
        detail(&op, "warm").starts_with(&format!("taking {standby}, made ahead")),
        "{op:?}"
    );
    let stages: Vec<&str> = op.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["warm", "standby", "identity"]);
    let w = h.services.vms.show("w").unwrap();
    assert_eq!(w.pid, Some(pid), "the standby's engine runs on as w");
    assert!(!h.engine.paused(pid), "resumed");
    assert!(h.services.vms.show(&standby).is_err(), "its name is gone");
    assert_eq!(
        h.engine.restored().len(),
        restores,
        "no restore for the create"
    );
    assert_eq!(h.listed(), ["w"]);
    // The agent of the guest answers as w's.
    let agent = h.services.vms.agent("w").await.unwrap();
    assert!(agent.health().await.is_ok());

    let next = standby_ready(&h).await;
    assert_ne!(next, standby);
    let mut dns = h.dns_names();
    dns.sort();
    let mut want = vec![next.clone(), "w".to_string()];
    want.sort();
    assert_eq!(dns, want, "w's DNS name is its own, the standby's gone");

    h.services.vms.discard_standbys(None).await;
    assert_eq!(h.dns_names(), ["w"]);
    assert_eq!(h.engine.running(), 1, "only w runs");
    assert_eq!(h.store.vms().unwrap().len(), 1);
}

#[tokio::test]
async fn a_dead_standby_is_removed_and_the_create_restores_instead() {
    let h = harness();
    finish(h.services.vms.warm_image("img").unwrap()).await;
    let standby = standby_ready(&h).await;
    h.engine.crash(pid_of(&h, &standby));
    let restores = h.engine.restored().len();
    let op = create(&h, "w").await;
    assert!(succeeded(&op), "{op:?}");
    assert_eq!(h.engine.restored().len(), restores + 1, "restored");
    assert!(
        h.store.vm(&standby).unwrap().is_none(),
        "the dead one is gone"
    );
    let next = standby_ready(&h).await;
    assert_ne!(next, standby);
}

#[tokio::test]
async fn a_daemon_restart_removes_a_standby_it_left() {
    let mut h = harness();
    finish(h.services.vms.warm_image("img").unwrap()).await;
    standby_ready(&h).await;
    h.restart_daemon();
    h.services.vms.reconcile().await.unwrap();
    assert!(h.store.vms().unwrap().is_empty());
    assert_eq!(h.engine.running(), 0);
    assert!(h.vm_dirs().is_empty(), "{:?}", h.vm_dirs());
    assert!(h.dns_names().is_empty());
}

#[tokio::test]
async fn a_create_asking_for_another_machine_or_ports_leaves_the_standby() {
    let h = harness();
    finish(h.services.vms.warm_image("img").unwrap()).await;
    let standby = standby_ready(&h).await;
    let op = finish(
        h.services
            .vms
            .create(CreateVm {
                name: Some("big".into()),
                cpus: Some(2),
                ..Default::default()
            })
            .unwrap(),
    )
    .await;
    assert!(succeeded(&op), "{op:?}");
    assert!(detail(&op, "warm").starts_with("booting"), "{op:?}");
    assert_eq!(standby_ready(&h).await, standby, "still there");
}

#[tokio::test]
async fn a_create_while_the_standby_is_being_made_waits_for_it_and_takes_it() {
    let h = harness();
    finish(h.services.vms.warm_image("img").unwrap()).await;
    // The standby is being made as `image warm` ends.
    let op = create(&h, "w").await;
    assert!(succeeded(&op), "{op:?}");
    assert!(detail(&op, "warm").starts_with("taking standby-"), "{op:?}");
    let stages: Vec<&str> = op.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        stages,
        ["warm", "standby", "identity"],
        "no restore of its own"
    );
    let pid = pid_of(&h, "w");
    assert!(!h.engine.paused(pid), "w runs");
    let agent = h.services.vms.agent("w").await.unwrap();
    assert!(agent.health().await.is_ok());
}

#[tokio::test]
async fn a_stale_warm_snapshots_standby_goes_at_the_next_create() {
    let h = harness();
    finish(h.services.vms.warm_image("img").unwrap()).await;
    standby_ready(&h).await;
    // The image changed since the snapshot (as after `image build --force`).
    let manifest = h
        .paths
        .state_dir
        .join("warm/img")
        .join(super::warm::MANIFEST);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["fingerprint"]["image"] = "another build".into();
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let op = create(&h, "w").await;
    assert!(succeeded(&op), "{op:?}");
    assert!(detail(&op, "warm").contains("stale"), "{op:?}");
    assert_eq!(h.services.vms.standby_state("img"), None);
    assert_eq!(h.store.vms().unwrap().len(), 1, "only w is left");
    assert_eq!(h.engine.running(), 1);
}
