//! The lifecycle on fakes (see `crate::testing`): every stage of create,
//! start, stop and delete failing in turn leaves nothing behind, state
//! transitions refuse what they must, capabilities run in order and undo
//! in reverse, reads never write, reconcile adopts and sweeps, and trusts
//! no scratch file it cannot check.

use crate::capability::{self, BootPlan, Capability, Ctx, Pipeline};
use crate::engine::fake::{FakeEngine, FakeFault};
use crate::error::Error;
use crate::layout::VmDir;
use crate::store::VmRecord;
use crate::testing::{Harness, Setup, finish, succeeded};
use banger_api::{CreateVm, EngineKind, ErrorCode, NetworkMode, VmState};
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};

/// What a boot leaves that a user (or the host) would notice.
#[derive(Debug, PartialEq)]
struct Leftovers {
    rows: usize,
    dirs: usize,
    engines: usize,
    /// Taps on the bridge.
    taps: Vec<String>,
    /// Taps off it (the warm pool).
    idle_taps: usize,
    dns: Vec<String>,
    leases: Vec<String>,
    nat: bool,
}

fn leftovers(h: &Harness) -> Leftovers {
    Leftovers {
        rows: h.services.vms.list().unwrap().len(),
        dirs: h.vm_dirs().len(),
        engines: h.engine.running(),
        taps: h.taps_on_bridge(),
        idle_taps: h.taps().len() - h.taps_on_bridge().len(),
        dns: h.dns_names(),
        leases: h.store.leased_ips().unwrap(),
        nat: h.runner.nat(),
    }
}

fn nothing() -> Leftovers {
    Leftovers {
        rows: 0,
        dirs: 0,
        engines: 0,
        taps: vec![],
        idle_taps: 0,
        dns: vec![],
        leases: vec![],
        nat: false,
    }
}

#[tokio::test]
async fn a_bridge_vm_boots_with_its_disks_tap_name_and_lease() {
    let h = Harness::new();
    let op = h.create("web", NetworkMode::Bridge).await;
    assert!(succeeded(&op), "{op:?}");
    let stages: Vec<&str> = op.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        stages,
        ["warm", "disks", "prepare", "config", "engine", "agent"]
    );
    let vm = h.services.vms.show("web").unwrap();
    assert_eq!(
        (vm.state, vm.ip.as_deref()),
        (VmState::Running, Some("172.30.0.2"))
    );
    assert_eq!(vm.dns_name.as_deref(), Some("web.banger"));
    let spec = h.engine.specs().pop().unwrap();
    let serials: Vec<&str> = spec.drives.iter().map(|d| d.serial).collect();
    assert_eq!(
        serials,
        [
            banger_proto::ROOT_DRIVE_SERIAL,
            banger_proto::WORK_DRIVE_SERIAL,
            banger_proto::CONFIG_DRIVE_SERIAL
        ]
    );
    assert!(matches!(&spec.nics[..], [crate::engine::Nic::Tap { .. }]));
    assert_eq!(h.dns_names(), ["web"]);
    assert!(h.runner.nat());
    let config = banger_proto::GuestConfig::from_drive(
        &std::fs::read(std::path::Path::new(&vm.dir).join("config.img")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        config.authorized_keys,
        ["ssh-ebbed25519 AAAA test".replace("ebbed", "ed")]
    );
    assert_eq!(config.network.unwrap().address, "172.30.0.2/24");
}

#[tokio::test]
async fn every_failing_create_stage_leaves_nothing_behind() {
    type Inject = fn(&Harness);
    let faults: [(&str, Inject); 8] = [
        ("root disk", |h| h.engine.fail(FakeFault::RootDisk)),
        ("work disk", |h| h.runner.fail("cp")),
        ("tap up", |h| h.links.fail_call("set_up bgtap", libc::EPERM)),
        ("bridge join", |h| h.links.fail_call("attach", libc::EBUSY)),
        ("engine", |h| h.engine.fail(FakeFault::Spawn)),
        ("agent", |h| h.engine.fail(FakeFault::DieAtBoot)),
        ("agent protocol", |h| h.engine.fail(FakeFault::OldAgent)),
        // The rules are installed again only when they change (or were
        // lost): the keeper's are the doomed VM's, so they are lost here.
        ("nat", |h| {
            h.services.network.forget_installed_rules();
            h.runner.fail("nft")
        }),
    ];
    for (stage, inject) in faults {
        let h = Harness::new();
        // Another bridge VM runs, so the shared host side must survive.
        assert!(succeeded(&h.create("keep", NetworkMode::Bridge).await));
        let before = leftovers(&h);
        inject(&h);
        let op = h.create("doomed", NetworkMode::Bridge).await;
        assert!(!succeeded(&op), "{stage}: the create failed");
        assert!(op.error.is_some(), "{stage}: says why");
        h.engine.heal();
        h.runner.heal();
        let after = leftovers(&h);
        assert!(
            after.idle_taps <= 1,
            "{stage}: the pool keeps its size: {after:?}"
        );
        assert_eq!(
            Leftovers {
                idle_taps: 0,
                ..after
            },
            Leftovers {
                idle_taps: 0,
                ..before
            },
            "{stage}: only the other vm's things remain"
        );
        // And alone, nothing at all remains.
        let h = Harness::new();
        inject(&h);
        let op = h.create("doomed", NetworkMode::Bridge).await;
        assert!(!succeeded(&op), "{stage}: the create failed alone");
        h.engine.heal();
        h.runner.heal();
        assert_eq!(leftovers(&h), nothing(), "{stage}: alone");
    }
}

#[tokio::test]
async fn a_guests_egress_policy_reaches_the_firewall_and_goes_with_it() {
    let h = Harness::new();
    let op = h
        .services
        .vms
        .create(CreateVm {
            name: Some("lim".into()),
            network: Some(NetworkMode::Bridge),
            allow_cidrs: vec!["10.9.0.0/16".into()],
            host_access: false,
            ..Default::default()
        })
        .unwrap();
    assert!(succeeded(&finish(op).await));
    let op = h
        .services
        .vms
        .create(CreateVm {
            name: Some("open".into()),
            network: Some(NetworkMode::Bridge),
            host_access: true,
            ..Default::default()
        })
        .unwrap();
    assert!(succeeded(&finish(op).await));
    let fw = h.runner.firewall();
    assert!(fw.contains("elements = { 10.9.0.0/16 }"), "{fw}");
    assert!(
        fw.contains("ip saddr 172.30.0.2 ip daddr != @allow_0 counter drop"),
        "{fw}"
    );
    assert!(
        fw.contains("ip saddr 172.30.0.3 accept"),
        "host access for open only: {fw}"
    );
    assert_eq!(h.services.vms.show("lim").unwrap().allow, ["10.9.0.0/16"]);
    assert!(succeeded(
        &finish(h.services.vms.delete("lim").unwrap()).await
    ));
    let fw = h.runner.firewall();
    assert!(!fw.contains("@allow_0"), "the limit went with its vm: {fw}");
    // Allow-lists are a bridge feature.
    let err = h.services.vms.create(CreateVm {
        network: Some(NetworkMode::User),
        allow_hosts: vec!["example.com".into()],
        ..Default::default()
    });
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("need --network bridge")
    );
}

#[tokio::test]
async fn a_failed_start_releases_the_boot_and_records_why() {
    let h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::Bridge).await));
    assert!(succeeded(
        &finish(h.services.vms.stop("web").unwrap()).await
    ));
    assert_eq!((h.engine.running(), h.dns_names().len()), (0, 0));
    h.engine.fail(FakeFault::DieAtBoot);
    let op = finish(h.services.vms.start("web").unwrap()).await;
    assert!(!succeeded(&op));
    let vm = h.services.vms.show("web").unwrap();
    assert_eq!(vm.state, VmState::Failed);
    assert!(vm.last_error.unwrap().contains("engine exited during boot"));
    let left = leftovers(&h);
    assert_eq!(
        (left.engines, left.taps, left.dns, left.nat),
        (0, vec![], vec![], false)
    );
    assert_eq!(
        left.leases,
        ["172.30.0.2"],
        "the lease is the vm's, not the boot's"
    );
    h.engine.heal();
    assert!(succeeded(
        &finish(h.services.vms.start("web").unwrap()).await
    ));
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Running);
}

#[tokio::test]
async fn stop_keeps_the_disks_and_delete_removes_everything() {
    let h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::Bridge).await));
    let vm = h.services.vms.show("web").unwrap();
    let work = std::path::Path::new(&vm.dir).join("work.ext4");
    assert!(succeeded(
        &finish(h.services.vms.stop("web").unwrap()).await
    ));
    assert!(work.exists(), "the work disk survives a stop");
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Stopped);
    assert_eq!(
        h.taps(),
        Vec::<String>::new(),
        "the last bridge vm takes the pool"
    );
    assert!(succeeded(
        &finish(h.services.vms.restart("web").unwrap()).await
    ));
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Running);
    assert!(succeeded(
        &finish(h.services.vms.delete("web").unwrap()).await
    ));
    assert_eq!(leftovers(&h), nothing());
    use banger_sys::net::link::Links;
    assert!(
        !h.links.exists("banger0").unwrap(),
        "the bridge lives only while a bridge vm does"
    );
}

#[tokio::test]
async fn a_start_up_sweep_leaves_other_instances_taps_alone() {
    let mut h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::Bridge).await));
    // Another instance's tap in the same namespace, and a stray of ours.
    h.links.insert("bgtapffff00aa01", Some("tun"));
    let stray = format!("{}0000aa", h.services.network.tap_prefix());
    h.links.insert(&stray, Some("tun"));
    h.restart_daemon();
    h.services.vms.reconcile().await.unwrap();
    h.services.network.settle();
    use banger_sys::net::link::Links;
    assert!(h.links.exists("bgtapffff00aa01").unwrap(), "not ours: kept");
    assert!(!h.links.exists(&stray).unwrap(), "ours and unowned: swept");
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Running);
}

#[tokio::test]
async fn a_guest_that_ignores_power_off_is_killed() {
    let h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::None).await));
    h.engine.fail(FakeFault::IgnorePowerOff);
    let op = finish(h.services.vms.stop("web").unwrap()).await;
    assert!(succeeded(&op));
    let stages: Vec<&str> = op.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["shutdown", "kill"]);
    assert_eq!(h.engine.running(), 0);
}

#[tokio::test]
async fn transitions_refuse_what_they_must() {
    let h = Harness::new();
    let err = h.services.vms.start("ghost").unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(succeeded(&h.create("web", NetworkMode::None).await));
    let err = h.services.vms.create(CreateVm {
        name: Some("web".into()),
        ..Default::default()
    });
    assert_eq!(err.unwrap_err().code(), ErrorCode::Conflict);
    // Starting a running vm is a no-op, stopping a stopped one too.
    assert!(succeeded(
        &finish(h.services.vms.start("web").unwrap()).await
    ));
    assert!(succeeded(
        &finish(h.services.vms.stop("web").unwrap()).await
    ));
    assert!(succeeded(
        &finish(h.services.vms.stop("web").unwrap()).await
    ));
    let err = h.services.vms.agent("web").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongState {
                state: VmState::Stopped,
                ..
            }
        ),
        "{err}"
    );
    h.store
        .set_vm_state("web", VmState::Creating, None)
        .unwrap();
    let err = h.services.vms.delete("web").unwrap_err();
    assert_eq!(err.code(), ErrorCode::Conflict);
    let err = h.services.vms.start("web").unwrap_err();
    assert!(
        err.to_string()
            .contains("is creating and cannot be started"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_requests_record_nothing() {
    let h = Harness::new();
    let vms = &h.services.vms;
    let bad = [
        CreateVm {
            name: Some("Bad".into()),
            ..Default::default()
        },
        CreateVm {
            cpus: Some(0),
            ..Default::default()
        },
        CreateVm {
            image: Some("nope".into()),
            ..Default::default()
        },
        CreateVm {
            publish: vec!["8080:80".into()],
            network: Some(NetworkMode::None),
            ..Default::default()
        },
        CreateVm {
            engine: Some(EngineKind::Firecracker),
            ..Default::default()
        },
    ];
    for req in bad {
        assert!(vms.create(req.clone()).is_err(), "{req:?}");
    }
    assert_eq!(leftovers(&h), nothing());
}

#[tokio::test]
async fn bridge_mode_needs_a_privileged_daemon() {
    let mut setup = Setup::default();
    setup.config.network = crate::config::NetworkChoice::Auto;
    let h = Harness::with(setup);
    assert_eq!(h.services.network.default_mode(), NetworkMode::Bridge);
    let h = Harness::unprivileged();
    let err = h.services.vms.create(CreateVm {
        network: Some(NetworkMode::Bridge),
        ..Default::default()
    });
    let err = err.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Invalid);
    assert!(err.to_string().contains("use --network user"), "{err}");
    assert_eq!(leftovers(&h), nothing());
}

#[tokio::test]
async fn reads_do_not_write_and_the_monitor_records_a_dead_engine() {
    let h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::Bridge).await));
    let pid = h.services.vms.show("web").unwrap().pid.unwrap();
    // Hold the vm's lock: the monitor cannot record anything meanwhile.
    let lock = h.services.vms.lock("web");
    let guard = lock.lock().await;
    h.engine.crash(pid);
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Stopped);
    let row = h.store.vm("web").unwrap().unwrap();
    assert_eq!(row.state, VmState::Running, "a read wrote nothing");
    assert_eq!(h.dns_names(), ["web"]);
    drop(guard);
    h.services.vms.settle().await;
    let row = h.store.vm("web").unwrap().unwrap();
    assert_eq!(row.state, VmState::Stopped, "the monitor recorded it");
    assert_eq!(
        (h.dns_names().len(), h.taps().len(), h.runner.nat()),
        (0, 0, false)
    );
}

#[tokio::test]
async fn reconcile_adopts_live_vms_and_clears_dead_ones() {
    let mut h = Harness::new();
    assert!(succeeded(&h.create("alive", NetworkMode::Bridge).await));
    assert!(succeeded(&h.create("dead", NetworkMode::Bridge).await));
    let dead_pid = h.services.vms.show("dead").unwrap().pid.unwrap();
    // The daemon "dies": new services over the same store and host.
    h.restart_daemon();
    h.engine.crash(dead_pid);
    let fresh = &h.services;
    fresh.vms.reconcile().await.unwrap();
    assert_eq!(fresh.vms.show("alive").unwrap().state, VmState::Running);
    assert_eq!(fresh.vms.show("dead").unwrap().state, VmState::Stopped);
    assert_eq!(h.dns_names(), ["alive"]);
    let tap = h.engine.specs()[0].nics.clone();
    let [crate::engine::Nic::Tap { ifname, .. }] = &tap[..] else {
        panic!("a bridge vm has one tap: {tap:?}")
    };
    assert_eq!(
        h.taps(),
        std::slice::from_ref(ifname),
        "only the adopted vm's tap is left"
    );
    assert!(
        fresh.vms.agent("alive").await.is_ok(),
        "the agent reconnects"
    );
    assert!(succeeded(&finish(fresh.vms.delete("alive").unwrap()).await));
    assert!(succeeded(&finish(fresh.vms.delete("dead").unwrap()).await));
    assert_eq!(leftovers(&h), nothing());
}

/// Two bridge vms, `kept` and `web`, and a daemon killed while `web` was
/// being made or deleted (its row already marked `state`, its engine still
/// running), then started again.
async fn interrupted(state: VmState) -> Harness {
    let mut h = Harness::new();
    assert!(succeeded(&h.create("kept", NetworkMode::Bridge).await));
    assert!(succeeded(&h.create("web", NetworkMode::Bridge).await));
    h.store.set_vm_state("web", state, None).unwrap();
    h.restart_daemon();
    h.services.vms.reconcile().await.unwrap();
    h
}

/// What is left once the vm `kept` is deleted too.
async fn after_deleting_kept(h: &Harness) -> Leftovers {
    assert_eq!(h.services.vms.show("kept").unwrap().state, VmState::Running);
    assert!(succeeded(
        &finish(h.services.vms.delete("kept").unwrap()).await
    ));
    leftovers(h)
}

#[tokio::test]
async fn an_interrupted_delete_is_finished_at_start_up() {
    let h = interrupted(VmState::Deleting).await;
    assert_eq!(h.listed(), ["kept"], "the deleted vm is gone");
    assert_eq!(
        h.engine.running(),
        1,
        "its engine was stopped, kept's was not"
    );
    assert_eq!(h.dns_names(), ["kept"]);
    assert_eq!(h.taps_on_bridge().len(), 1);
    assert_eq!(
        h.store.leased_ips().unwrap().len(),
        1,
        "its address went back"
    );
    assert_eq!(after_deleting_kept(&h).await, nothing());
}

#[tokio::test]
async fn an_interrupted_create_is_undone_at_start_up() {
    let h = interrupted(VmState::Creating).await;
    assert!(
        h.services.vms.show("web").is_err(),
        "the half-made vm is gone"
    );
    assert_eq!(h.engine.running(), 1);
    assert_eq!(h.dns_names(), ["kept"]);
    assert_eq!(after_deleting_kept(&h).await, nothing());
}

#[tokio::test]
async fn with_no_engine_left_start_up_sweeps_unrecorded_taps_nat_and_names() {
    let mut h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::Bridge).await));
    let pid = h.services.vms.show("web").unwrap().pid.unwrap();
    // The engine dies while the daemon is down, and nothing records what
    // its boot made (as after a daemon killed before it wrote the scratch
    // file): only the sweep can find the tap, the name and the NAT table.
    // A name and a tap of this instance that no vm ever owned go too.
    h.restart_daemon();
    h.engine.crash(pid);
    std::fs::remove_file(scratch(&h, "web").0.handles()).unwrap();
    let hosts = h.services.network.hosts_dir();
    std::fs::write(hosts.join("ghost"), "172.30.0.77 ghost ghost.banger\n").unwrap();
    let stray = format!("{}0000bb", h.services.network.tap_prefix());
    h.links.insert(&stray, Some("tun"));
    h.services.vms.reconcile().await.unwrap();
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Stopped);
    let lease = h.store.leased_ips().unwrap();
    assert_eq!(
        leftovers(&h),
        Leftovers {
            rows: 1,
            dirs: leftovers(&h).dirs,
            leases: lease.clone(),
            ..nothing()
        },
        "no tap, name, NAT or engine; the stopped vm keeps its row, disks and address"
    );
    assert_eq!(lease.len(), 1);
    use banger_sys::net::link::Links;
    assert!(
        !h.links.exists("banger0").unwrap(),
        "no bridge without a bridge vm"
    );
    assert!(succeeded(
        &finish(h.services.vms.start("web").unwrap()).await
    ));
    assert_eq!(h.dns_names(), ["web"], "and it starts again");
}

#[tokio::test]
async fn an_instance_with_no_vm_sweeps_a_leftover_nat_table_tap_and_name() {
    use banger_sys::command::{Cmd, Runner};
    let mut h = Harness::new();
    // What a daemon of this instance could have left and no row explains.
    let nat = Cmd::new("nft").stdin(b"table ip banger { chain postrouting {} }".to_vec());
    h.runner.run(&nat).unwrap();
    assert!(h.runner.nat());
    let hosts = h.services.network.hosts_dir();
    std::fs::create_dir_all(&hosts).unwrap();
    std::fs::write(hosts.join("ghost"), "172.30.0.77 ghost ghost.banger\n").unwrap();
    let stray = format!("{}0000cc", h.services.network.tap_prefix());
    h.links.insert(&stray, Some("tun"));
    h.restart_daemon();
    h.services.vms.reconcile().await.unwrap();
    assert_eq!(leftovers(&h), nothing());
}

/// A VM's scratch file as JSON, to forge from.
fn scratch(h: &Harness, name: &str) -> (VmDir, serde_json::Value) {
    let vm = h.store.vm(name).unwrap().unwrap();
    let dir = h.services.vms.dir(&vm);
    let json = std::fs::read(dir.handles()).unwrap_or_else(|_| b"null".to_vec());
    (dir, serde_json::from_slice(&json).unwrap())
}

#[tokio::test]
async fn a_scratch_file_naming_another_vms_engine_gets_it_no_signal() {
    let mut h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::None).await));
    assert!(succeeded(&h.create("old", NetworkMode::None).await));
    assert!(succeeded(
        &finish(h.services.vms.stop("old").unwrap()).await
    ));
    // The stopped vm's scratch file claims the running one's engine.
    let (_, web) = scratch(&h, "web");
    let (old_dir, _) = scratch(&h, "old");
    std::fs::write(old_dir.handles(), web.to_string()).unwrap();
    h.restart_daemon();
    h.services.vms.reconcile().await.unwrap();
    assert_eq!(h.engine.running(), 1, "web's engine still runs");
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Running);
    assert_eq!(h.services.vms.show("old").unwrap().state, VmState::Stopped);
    assert!(!old_dir.handles().exists(), "the forged file is dropped");
}

#[tokio::test]
async fn a_tap_name_that_is_not_bangers_is_never_deleted() {
    use banger_sys::net::link::Links;
    let mut h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::Bridge).await));
    assert!(succeeded(&h.create("old", NetworkMode::Bridge).await));
    assert!(succeeded(
        &finish(h.services.vms.stop("old").unwrap()).await
    ));
    h.links.insert("eth0", None);
    h.links.insert("eth1", None);
    // The running vm's file names the host's eth0 as its tap; the stopped
    // one's (its own sockets, an engine long gone) names eth1.
    let (web_dir, mut web) = scratch(&h, "web");
    web["capabilities"][capability::bridge::NAME]["tap"] = "eth0".into();
    std::fs::write(web_dir.handles(), web.to_string()).unwrap();
    let mut old = web.clone();
    let old_vm = h.store.vm("old").unwrap().unwrap();
    let old_dir = h.services.vms.dir(&old_vm);
    old["pid"] = 4_000_000.into();
    old["agent_socket"] = old_dir.run.join("agent.sock").to_string_lossy().into();
    old["control_socket"] = old_dir.run.join("control.sock").to_string_lossy().into();
    old["capabilities"][capability::bridge::NAME]["tap"] = "eth1".into();
    std::fs::write(old_dir.handles(), old.to_string()).unwrap();
    h.restart_daemon();
    h.services.vms.reconcile().await.unwrap();
    assert_eq!(h.services.vms.show("web").unwrap().state, VmState::Running);
    assert!(succeeded(
        &finish(h.services.vms.stop("web").unwrap()).await
    ));
    h.services.network.settle();
    assert!(h.links.exists("eth0").unwrap(), "eth0 is not banger's");
    assert!(h.links.exists("eth1").unwrap(), "eth1 is not banger's");
}

#[tokio::test]
async fn vms_of_two_engines_live_side_by_side() {
    let firecracker = Arc::new(FakeEngine::new(EngineKind::Firecracker));
    let h = Harness::with(Setup {
        engines: vec![firecracker.clone()],
        ..Setup::default()
    });
    assert!(succeeded(&h.create("q", NetworkMode::None).await));
    let op = h
        .services
        .vms
        .create(CreateVm {
            name: Some("f".into()),
            engine: Some(EngineKind::Firecracker),
            network: Some(NetworkMode::None),
            ..Default::default()
        })
        .unwrap();
    assert!(succeeded(&finish(op).await));
    assert_eq!(h.services.vms.show("q").unwrap().engine, EngineKind::Qemu);
    assert_eq!(
        h.services.vms.show("f").unwrap().engine,
        EngineKind::Firecracker
    );
    assert_eq!((h.engine.running(), firecracker.running()), (1, 1));
    assert!(succeeded(&finish(h.services.vms.stop("f").unwrap()).await));
    assert_eq!((h.engine.running(), firecracker.running()), (1, 0));
}

/// Records its hooks in a shared log; fails where told.
struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    fail_prepare: bool,
}

impl Recorder {
    fn note(&self, hook: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{hook} {}", self.name));
    }
}

impl Capability for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn create<'a>(&'a self, _ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), Error>> {
        self.note("create");
        Box::pin(async { Ok(()) })
    }

    fn destroy(&self, _vm: &VmRecord, _dir: &VmDir) {
        self.note("destroy");
    }

    fn prepare<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        _plan: &'a mut BootPlan,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.note("prepare");
        let fail = self.fail_prepare;
        Box::pin(async move {
            if fail {
                return Err(Error::Guest("injected".into()));
            }
            Ok(())
        })
    }

    fn release(&self, _vm: &VmRecord, _runtime: Option<&serde_json::Value>) {
        self.note("release");
    }
}

#[tokio::test]
async fn capabilities_run_in_order_and_undo_in_reverse() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let h = Harness::with(Setup {
        capabilities: Some(Box::new(move |_: &capability::Deps| {
            let cap = |name, fail_prepare| -> Arc<dyn Capability> {
                Arc::new(Recorder {
                    name,
                    log: log2.clone(),
                    fail_prepare,
                })
            };
            Pipeline::new(vec![cap("a", false), cap("b", false), cap("c", true)])
        })),
        ..Setup::default()
    });
    let op = h.create("web", NetworkMode::None).await;
    assert!(!succeeded(&op));
    assert_eq!(
        *log.lock().unwrap(),
        [
            "create a",
            "create b",
            "create c",
            "prepare a",
            "prepare b",
            "prepare c",
            "release b",
            "release a",
            "destroy c",
            "destroy b",
            "destroy a"
        ]
    );
    assert_eq!(leftovers(&h), nothing());
}

#[tokio::test]
async fn a_bridge_another_instance_holds_is_refused_and_named_and_ours_is_let_go() {
    let h = Harness::new();
    let claim = h.services.network.claim_path();
    std::fs::create_dir_all(claim.parent().unwrap()).unwrap();
    let other = banger_sys::fs::lock_exclusive(&claim).unwrap();
    std::fs::write(&claim, "pid 4242, state dir /elsewhere").unwrap();
    let op = h.create("web", NetworkMode::Bridge).await;
    let err = op
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        err.contains("bridge banger0 is in use") && err.contains("pid 4242, state dir /elsewhere"),
        "{op:?}"
    );
    assert_eq!(leftovers(&h), nothing());
    use banger_sys::net::link::Links;
    assert!(
        !h.links.exists("banger0").unwrap(),
        "the other's bridge untouched"
    );
    let doctor = h.services.network.checks();
    let bridge = doctor.iter().find(|c| c.name == "bridge").unwrap();
    assert!(bridge.detail.contains("pid 4242"), "{bridge:?}");
    drop(other);
    let doctor = h.services.network.checks();
    let bridge = doctor.iter().find(|c| c.name == "bridge").unwrap();
    assert!(!bridge.detail.contains("pid 4242"), "{bridge:?}");
    assert!(succeeded(&h.create("web", NetworkMode::Bridge).await));
    assert!(
        banger_sys::fs::lock_exclusive(&claim).is_err(),
        "ours while web runs"
    );
    assert!(succeeded(
        &finish(h.services.vms.delete("web").unwrap()).await
    ));
    assert!(
        banger_sys::fs::lock_exclusive(&claim).is_ok(),
        "let go with the bridge"
    );
}
