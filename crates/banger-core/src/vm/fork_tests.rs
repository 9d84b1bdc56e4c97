//! `vm fork` on the fake engine: the forks run, restored from one snapshot
//! (RAM mapped privately), which is gone afterwards; a failed fork is
//! undone and named, the others kept; what a killed daemon's fork left is
//! removed by the next one.

use super::fork::FORK_SNAPSHOT;
use crate::engine::RamMapping;
use crate::engine::fake::FakeFault;
use crate::testing::{Harness, finish, succeeded};
use banger_api::{ForkVm, NetworkMode, VmState};

fn fork(count: u32) -> ForkVm {
    ForkVm {
        count,
        prefix: Some("try".into()),
    }
}

#[tokio::test]
async fn forks_run_from_one_snapshot_that_is_gone_afterwards() {
    let h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::None).await));
    let op = finish(h.services.vms.fork("web", fork(3)).unwrap()).await;
    assert!(succeeded(&op), "{op:?}");
    let stages: Vec<&str> = op.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["layers", "memory", "save", "forks", "forget"]);
    for n in ["try-1", "try-2", "try-3"] {
        assert_eq!(h.services.vms.show(n).unwrap().state, VmState::Running);
    }
    let restored = h.engine.restored();
    assert_eq!(restored.len(), 3);
    assert!(restored.iter().all(|(_, ram)| *ram == RamMapping::Private));
    assert!(h.services.vms.snapshots("web").unwrap().is_empty());
    assert_eq!(h.engine.running(), 4);
}

#[tokio::test]
async fn forks_are_refused_up_front_on_a_taken_name_or_count() {
    let h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::None).await));
    assert!(succeeded(&h.create("try-2", NetworkMode::None).await));
    assert!(h.services.vms.fork("web", fork(2)).is_err());
    assert!(h.services.vms.fork("web", fork(0)).is_err());
    assert!(h.services.vms.fork("web", fork(33)).is_err());
    assert!(
        h.store.vm("try-1").unwrap().is_none(),
        "a refused fork records nothing"
    );
}

#[tokio::test]
async fn failed_forks_are_undone_and_the_snapshot_removed() {
    let h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::None).await));
    h.engine.fail(FakeFault::Restore);
    let op = finish(h.services.vms.fork("web", fork(2)).unwrap()).await;
    assert!(!succeeded(&op));
    let msg = op.error.unwrap().message;
    assert!(
        msg.contains("2 of 2 forks failed") && msg.contains("try-1"),
        "{msg}"
    );
    assert!(h.store.vm("try-1").unwrap().is_none());
    assert!(h.store.vm("try-2").unwrap().is_none());
    assert!(h.services.vms.snapshots("web").unwrap().is_empty());
    assert_eq!(h.engine.running(), 1);
}

#[tokio::test]
async fn a_fork_snapshot_a_killed_daemon_left_is_removed_at_start() {
    let mut h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::None).await));
    // A fork's snapshot, taken as the fork takes it, then the daemon dies.
    let name = format!("{FORK_SNAPSHOT}1");
    let op = finish(
        h.services
            .vms
            .snapshot(
                "web",
                banger_api::TakeSnapshot {
                    name: Some("keep".into()),
                    stop: false,
                },
            )
            .unwrap(),
    )
    .await;
    assert!(succeeded(&op));
    let vms = &h.services.vms;
    let op = vms.ops.begin(banger_api::OperationKind::Fork, "web");
    vms.run_snapshot(&op, "web", &name, false).await.unwrap();
    assert_eq!(vms.snapshots("web").unwrap().len(), 2);
    h.restart_daemon();
    h.services.vms.reconcile().await.unwrap();
    let left: Vec<String> = h
        .services
        .vms
        .snapshots("web")
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(left, ["keep"], "the user's snapshot stays");
}
