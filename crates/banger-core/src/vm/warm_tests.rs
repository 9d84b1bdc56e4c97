//! Warm images on the fake engine: `image warm` leaves a warm snapshot and
//! no VM; a create asking for the default machine restores it (with the
//! identity stage, its RAM mapped privately), one asking for another boots
//! and says why; a failed warm leaves nothing.

use super::warm::MANIFEST;
use crate::engine::RamMapping;
use crate::engine::fake::FakeFault;
use crate::testing::{Harness, finish, stage_detail as detail, succeeded};
use banger_api::{CreateVm, Operation};

fn stage_names(op: &Operation) -> Vec<&str> {
    op.stages.iter().map(|s| s.name.as_str()).collect()
}

fn named(name: &str) -> CreateVm {
    CreateVm {
        name: Some(name.into()),
        ..Default::default()
    }
}

async fn create(h: &Harness, req: CreateVm) -> Operation {
    finish(h.services.vms.create(req).unwrap()).await
}

#[tokio::test]
async fn a_warm_image_is_restored_by_a_create_of_its_machine_and_booted_otherwise() {
    let h = Harness::new();
    let op = finish(h.services.vms.warm_image("img").unwrap()).await;
    assert!(succeeded(&op), "{op:?}");
    assert!(stage_names(&op).contains(&"keep"));
    assert!(h.store.vms().unwrap().is_empty(), "the warming vm is gone");
    assert_eq!(h.engine.running(), 0);
    let warm = h.paths.state_dir.join("warm/img");
    assert!(warm.join(MANIFEST).exists());

    let op = create(&h, named("w")).await;
    assert!(succeeded(&op), "{op:?}");
    assert_eq!(
        stage_names(&op),
        [
            "warm", "disks", "prepare", "config", "engine", "agent", "identity"
        ]
    );
    assert_eq!(
        detail(&op, "warm"),
        "restoring the warm snapshot of image img"
    );
    let restored = h.engine.restored();
    assert_eq!(restored.len(), 1);
    assert_eq!(
        restored[0].1,
        RamMapping::Private,
        "pages shared between vms"
    );

    let op = create(
        &h,
        CreateVm {
            name: Some("big".into()),
            cpus: Some(2),
            ..Default::default()
        },
    )
    .await;
    assert!(succeeded(&op), "{op:?}");
    assert!(!stage_names(&op).contains(&"identity"), "{op:?}");
    assert!(
        detail(&op, "warm").contains("this vm asks for 2 cpus (warm: 1)"),
        "{op:?}"
    );

    let op = create(
        &h,
        CreateVm {
            name: Some("cold".into()),
            cold: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(detail(&op, "warm"), "booting: --cold");
    assert_eq!(h.engine.restored().len(), 1, "only the first was restored");

    assert!(h.services.vms.unwarm("img").await.unwrap());
    assert!(!warm.exists());
    assert!(!h.services.vms.unwarm("img").await.unwrap());
}

#[tokio::test]
async fn a_failed_warm_leaves_no_vm_and_no_snapshot() {
    let h = Harness::new();
    h.engine.fail(FakeFault::Snapshot);
    let op = finish(h.services.vms.warm_image("img").unwrap()).await;
    assert!(!succeeded(&op), "{op:?}");
    assert!(h.store.vms().unwrap().is_empty(), "the warming vm is gone");
    assert_eq!(h.engine.running(), 0, "its engine too");
    let left: Vec<_> = std::fs::read_dir(h.paths.state_dir.join("warm"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let vms: Vec<_> = std::fs::read_dir(h.paths.state_dir.join("vms"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(vms.is_empty(), "{vms:?}");
}

#[tokio::test]
async fn a_warm_snapshot_booted_with_another_kernel_command_line_is_not_used() {
    let mut h = Harness::new();
    let op = finish(h.services.vms.warm_image("img").unwrap()).await;
    assert!(succeeded(&op), "{op:?}");
    // The warm guest booted without ASLR (TCG's default); VMs are now to
    // keep it, which only a boot gives them.
    h.config.tcg_aslr = true;
    h.restart_daemon();
    let op = create(&h, named("w")).await;
    assert!(succeeded(&op), "{op:?}");
    assert!(h.engine.restored().is_empty(), "{op:?}");
    let why = detail(&op, "warm");
    assert!(
        why.contains("stale") && why.contains("norandmaps") && why.contains("image warm img"),
        "{why}"
    );
}
