//! Snapshot and restore on the fake engine: what is recorded, which disk
//! layers the next boot gets, and what a failure leaves.

use super::layers::{self, Tops};
use crate::engine::RamMapping;
use crate::engine::fake::FakeFault;
use crate::error::Error;
use crate::testing::{Harness, finish, succeeded};
use banger_api::{NetworkMode, RestoreSnapshot, TakeSnapshot, VmState};

fn take(name: Option<&str>, stop: bool) -> TakeSnapshot {
    TakeSnapshot {
        name: name.map(Into::into),
        stop,
    }
}

fn stage_names(op: &banger_api::Operation) -> Vec<&str> {
    op.stages.iter().map(|s| s.name.as_str()).collect()
}

async fn running_vm() -> Harness {
    let h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::None).await));
    h
}

/// Takes snapshots `names` of the running `web`, one after the other.
async fn snapshots_of_web(h: &Harness, names: &[&str]) {
    for name in names {
        let op = finish(
            h.services
                .vms
                .snapshot("web", take(Some(name), false))
                .unwrap(),
        )
        .await;
        assert!(succeeded(&op), "{op:?}");
    }
}

fn vm_dir(h: &Harness) -> crate::layout::VmDir {
    let vm = h.store.vm("web").unwrap().unwrap();
    crate::layout::VmDir {
        state: vm.dir.into(),
        run: h.paths.runtime_dir.join("vms").join(&vm.id),
    }
}

#[tokio::test]
async fn a_snapshot_is_recorded_and_the_vm_runs_on_new_layers() {
    let h = running_vm().await;
    let op = finish(h.services.vms.snapshot("web", take(None, false)).unwrap()).await;
    assert!(succeeded(&op), "{op:?}");
    assert_eq!(stage_names(&op), ["layers", "memory", "save"]);
    assert_eq!(op.target, "web/snap-1");
    let list = h.services.vms.snapshots("web").unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "snap-1");
    let dir = vm_dir(&h);
    let manifest = layers::read_manifest(&layers::snapshot_dir(&dir, "snap-1")).unwrap();
    assert_eq!(
        manifest.layers[banger_proto::ROOT_DRIVE_SERIAL].file,
        "root.fake"
    );
    let tops = Tops::load(&dir).unwrap();
    assert!(
        tops.0[banger_proto::ROOT_DRIVE_SERIAL]
            .file
            .starts_with("layers/")
    );
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Running);
    assert_eq!(h.engine.running(), 1);

    // The next boot attaches the new top, not the frozen layer.
    assert!(succeeded(
        &finish(h.services.vms.stop("web").unwrap()).await
    ));
    assert!(succeeded(
        &finish(h.services.vms.start("web").unwrap()).await
    ));
    let root = h.engine.specs().pop().unwrap().drives[0].clone();
    assert_eq!(
        root.path,
        dir.file(&tops.0[banger_proto::ROOT_DRIVE_SERIAL].file)
    );
}

#[tokio::test]
async fn snapshot_with_stop_leaves_the_vm_stopped() {
    let h = running_vm().await;
    let op = finish(
        h.services
            .vms
            .snapshot("web", take(Some("s"), true))
            .unwrap(),
    )
    .await;
    assert!(succeeded(&op), "{op:?}");
    assert_eq!(stage_names(&op), ["layers", "memory", "save", "stop"]);
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Stopped);
    assert_eq!(h.engine.running(), 0);
}

#[tokio::test]
async fn a_failed_snapshot_leaves_no_snapshot_and_the_vm_running() {
    let h = running_vm().await;
    h.engine.fail(FakeFault::Snapshot);
    let op = finish(
        h.services
            .vms
            .snapshot("web", take(Some("s"), false))
            .unwrap(),
    )
    .await;
    assert!(!succeeded(&op));
    assert!(h.services.vms.snapshots("web").unwrap().is_empty());
    let dir = vm_dir(&h);
    assert!(layers::sweep(&dir).is_empty());
    let left: Vec<_> = std::fs::read_dir(layers::snapshots_dir(&dir))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "staging left behind: {left:?}");
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Running);
}

#[tokio::test]
async fn names_are_unique_per_vm_and_deleted_snapshots_are_gone() {
    let h = running_vm().await;
    let op = finish(
        h.services
            .vms
            .snapshot("web", take(Some("a"), false))
            .unwrap(),
    )
    .await;
    assert!(succeeded(&op));
    let again = h.services.vms.snapshot("web", take(Some("a"), false));
    assert!(matches!(again, Err(Error::SnapshotExists { .. })));
    h.services.vms.delete_snapshot("web", "a").await.unwrap();
    assert!(h.services.vms.snapshots("web").unwrap().is_empty());
    assert!(!layers::snapshot_dir(&vm_dir(&h), "a").exists());
    let gone = h.services.vms.delete_snapshot("web", "a").await;
    assert!(matches!(gone, Err(Error::SnapshotNotFound { .. })));
    let restore = h.services.vms.restore(
        "web",
        RestoreSnapshot {
            snapshot: "a".into(),
        },
    );
    assert!(matches!(restore, Err(Error::SnapshotNotFound { .. })));
}

#[tokio::test]
async fn restore_starts_the_engine_from_the_snapshot_on_fresh_layers() {
    let h = running_vm().await;
    let op = finish(
        h.services
            .vms
            .snapshot("web", take(Some("s"), false))
            .unwrap(),
    )
    .await;
    assert!(succeeded(&op));
    let dir = vm_dir(&h);
    let top_after_snapshot = Tops::load(&dir).unwrap().0[banger_proto::ROOT_DRIVE_SERIAL].clone();
    let req = RestoreSnapshot {
        snapshot: "s".into(),
    };
    let op = finish(h.services.vms.restore("web", req).unwrap()).await;
    assert!(succeeded(&op), "{op:?}");
    assert_eq!(
        stage_names(&op),
        [
            "stop", "layers", "prepare", "config", "engine", "agent", "identity"
        ]
    );
    assert_eq!(
        h.engine.restored(),
        [(layers::snapshot_dir(&dir, "s"), RamMapping::Copy)]
    );
    assert_eq!(h.engine.running(), 1);
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Running);
    let top = Tops::load(&dir).unwrap().0[banger_proto::ROOT_DRIVE_SERIAL].clone();
    assert_ne!(top, top_after_snapshot);
    assert!(
        !dir.file(&top_after_snapshot.file).exists(),
        "the old top is removed"
    );
    assert_eq!(
        h.engine.specs().pop().unwrap().drives[0].path,
        dir.file(&top.file)
    );
}

#[tokio::test]
async fn a_failed_restore_leaves_the_vm_failed_and_no_engine() {
    let h = running_vm().await;
    let op = finish(
        h.services
            .vms
            .snapshot("web", take(Some("s"), false))
            .unwrap(),
    )
    .await;
    assert!(succeeded(&op));
    h.engine.fail(FakeFault::Restore);
    let req = RestoreSnapshot {
        snapshot: "s".into(),
    };
    let op = finish(h.services.vms.restore("web", req).unwrap()).await;
    assert!(!succeeded(&op));
    let vm = h.services.vms.show("web").unwrap();
    assert_eq!(vm.state, VmState::Failed);
    assert!(vm.last_error.unwrap().contains("injected restore failure"));
    assert_eq!(h.engine.running(), 0);
    h.engine.heal();
    let req = RestoreSnapshot {
        snapshot: "s".into(),
    };
    assert!(succeeded(
        &finish(h.services.vms.restore("web", req).unwrap()).await
    ));
}

#[tokio::test]
async fn a_vm_created_from_a_snapshot_is_a_new_vm_restored_from_it() {
    let h = running_vm().await;
    let op = finish(
        h.services
            .vms
            .snapshot("web", take(Some("s"), false))
            .unwrap(),
    )
    .await;
    assert!(succeeded(&op));
    let req = |from: &str, cpus: Option<u32>| banger_api::CreateVm {
        name: Some("copy".into()),
        cpus,
        from_snapshot: Some(from.into()),
        ..Default::default()
    };
    assert!(matches!(
        h.services.vms.create(req("web/nope", None)),
        Err(Error::SnapshotNotFound { .. })
    ));
    assert!(matches!(
        h.services.vms.create(req("web", None)),
        Err(Error::Invalid { .. })
    ));
    let web = h.store.vm("web").unwrap().unwrap();
    assert!(matches!(
        h.services.vms.create(req("web/s", Some(web.cpus + 1))),
        Err(Error::Invalid { .. })
    ));
    let op = finish(h.services.vms.create(req("web/s", None)).unwrap()).await;
    assert!(succeeded(&op), "{op:?}");
    let copy = h.store.vm("copy").unwrap().unwrap();
    assert_ne!(copy.id, web.id);
    assert_ne!(copy.dir, web.dir);
    assert_eq!((copy.cpus, copy.memory_mib), (web.cpus, web.memory_mib));
    assert_eq!(h.services.vms.show("copy").unwrap().state, VmState::Running);
    let (from, ram) = h.engine.restored().pop().unwrap();
    assert!(
        from.starts_with(&copy.dir),
        "restored from its own copy: {from:?}"
    );
    assert_eq!(ram, RamMapping::Private);
    assert!(
        !from.exists(),
        "the copy of the snapshot's files is gone once it runs"
    );
    assert_eq!(h.engine.running(), 2);
}

#[tokio::test]
async fn layers_no_snapshot_or_top_needs_are_removed() {
    let h = running_vm().await;
    let dir = vm_dir(&h);
    let root =
        |h: &Harness| Tops::load(&vm_dir(h)).unwrap().0[banger_proto::ROOT_DRIVE_SERIAL].clone();
    snapshots_of_web(&h, &["a", "b"]).await;
    // b froze the layer a made; the top now is over it.
    let frozen_by_b = layers::read_manifest(&layers::snapshot_dir(&dir, "b"))
        .unwrap()
        .layers[banger_proto::ROOT_DRIVE_SERIAL]
        .clone();
    let top_before = root(&h);
    let req = RestoreSnapshot {
        snapshot: "a".into(),
    };
    assert!(succeeded(
        &finish(h.services.vms.restore("web", req).unwrap()).await
    ));
    assert!(!dir.file(&top_before.file).exists(), "the old top goes");
    assert!(
        dir.file(&frozen_by_b.file).exists(),
        "b still needs its layer"
    );
    h.services.vms.delete_snapshot("web", "b").await.unwrap();
    assert!(
        !dir.file(&frozen_by_b.file).exists(),
        "nothing needs b's layer now"
    );
    assert!(
        dir.file("root.fake").exists(),
        "a and the top are built on the first layer"
    );
    assert!(dir.file(&root(&h).file).exists());
}

#[tokio::test]
async fn a_guest_an_interrupted_snapshot_left_paused_runs_on_after_a_daemon_restart() {
    let mut h = running_vm().await;
    let vm = h.services.vms.show("web").unwrap();
    let pid = vm.pid.unwrap();
    // The daemon dies inside the engine's snapshot, after `stop`.
    let handles = crate::engine::Handles {
        pid,
        accel: crate::engine::Accel::Tcg,
        agent_socket: "/nowhere".into(),
        control_socket: "/nowhere".into(),
        started_at: 0,
    };
    let staging = tempfile::tempdir().unwrap();
    use crate::engine::Engine;
    h.engine
        .snapshot(&handles, staging.path(), &[], false)
        .await
        .unwrap();
    assert!(h.engine.paused(pid));
    h.restart_daemon();
    h.services.vms.reconcile().await.unwrap();
    assert!(!h.engine.paused(pid), "adoption resumed it");
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Running);
}

/// The files a drive's chain of layers reads, top down (a fake layer
/// holds the path of what it is over).
fn chain(dir: &crate::layout::VmDir, serial: &str) -> Vec<std::path::PathBuf> {
    let top = Tops::load(dir).unwrap().0[serial].resolve(dir).unwrap();
    let mut files = vec![top.path];
    while files.len() < 16
        && files
            .last()
            .unwrap()
            .starts_with(dir.file(layers::LAYERS_DIR))
    {
        let name = std::fs::read_to_string(files.last().unwrap()).unwrap();
        files.push(name.into());
    }
    files
}

/// Makes `copy` from snapshot `snap` (`VM/NAME`).
async fn copy_of(h: &Harness, snap: &str) {
    let req = banger_api::CreateVm {
        name: Some("copy".into()),
        from_snapshot: Some(snap.into()),
        ..Default::default()
    };
    assert!(succeeded(
        &finish(h.services.vms.create(req).unwrap()).await
    ));
}

#[tokio::test]
async fn a_vm_from_a_snapshot_links_its_first_layers_and_outlives_its_source() {
    use std::os::unix::fs::MetadataExt;
    let h = running_vm().await;
    // Two snapshots: the second's layers are over the first's.
    snapshots_of_web(&h, &["one", "two"]).await;
    let web = vm_dir(&h);
    copy_of(&h, "web/two").await;
    let copy = h.store.vm("copy").unwrap().unwrap();
    let copy = crate::layout::VmDir {
        state: copy.dir.into(),
        run: h.paths.runtime_dir.join("vms").join(&copy.id),
    };
    let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    for serial in ["banger-root", "banger-work"] {
        let files = chain(&copy, serial);
        assert_eq!(
            files.len(),
            3,
            "{serial}: a new top over the two layers: {files:?}"
        );
        assert!(
            files.iter().all(|f| f.starts_with(&copy.state)),
            "{files:?}"
        );
        let first = files.last().unwrap();
        let theirs = web.state.join(first.strip_prefix(&copy.state).unwrap());
        assert_eq!(ino(first), ino(&theirs), "{serial}: the first layer linked");
        let between = web.state.join(files[1].strip_prefix(&copy.state).unwrap());
        assert_ne!(ino(&files[1]), ino(&between), "{serial}: a layer copied");
    }
    // The source and its snapshots go; the copy's disks stay whole.
    assert!(succeeded(
        &finish(h.services.vms.delete("web").unwrap()).await
    ));
    assert!(!web.state.exists());
    for serial in ["banger-root", "banger-work"] {
        let files = chain(&copy, serial);
        assert!(files.iter().all(|f| f.exists()), "{serial}: {files:?}");
    }
    assert!(succeeded(
        &finish(h.services.vms.stop("copy").unwrap()).await
    ));
    assert!(succeeded(
        &finish(h.services.vms.restart("copy").unwrap()).await
    ));
}

#[tokio::test]
async fn a_snapshots_size_counts_what_vms_made_from_it_hold_apart() {
    const MIB: u64 = 1 << 20;
    let h = running_vm().await;
    let web = vm_dir(&h);
    // Data on the work disk, which the first snapshot freezes.
    std::fs::write(web.work_disk(), vec![0xa5u8; 2 * MIB as usize]).unwrap();
    snapshots_of_web(&h, &["one"]).await;
    let one = || {
        h.services
            .vms
            .snapshots("web")
            .unwrap()
            .into_iter()
            .find(|s| s.name == "one")
            .unwrap()
    };
    let alone = one();
    assert!(alone.size_bytes >= 2 * MIB, "{alone:?}");
    assert_eq!(alone.shared_bytes, 0, "{alone:?}");

    copy_of(&h, "web/one").await;
    let linked = one();
    assert!(linked.shared_bytes >= 2 * MIB, "{linked:?}");
    assert!(
        linked.size_bytes < MIB,
        "the linked layer moved: {linked:?}"
    );
    assert_eq!(
        linked.size_bytes + linked.shared_bytes,
        alone.size_bytes + alone.shared_bytes
    );

    assert!(succeeded(
        &finish(h.services.vms.delete("copy").unwrap()).await
    ));
    assert_eq!(one(), alone, "its own again once the copy is gone");
}
