//! The lifecycle under concurrent requests, on fakes (see `crate::testing`):
//! many creates and deletes at once on an address pool too small for them
//! all. One VM per name, no address, MAC, tap or agent channel handed out
//! twice, every refusal says why, and what the deletes leave is nothing.

use crate::testing::{Harness, Setup, finish, succeeded};
use banger_api::{CreateVm, ErrorCode, NetworkMode, Operation};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A /29: the gateway and five guest addresses.
const POOL: usize = 5;
const NAMES: usize = 8;

fn tiny_pool() -> Harness {
    let mut setup = Setup::default();
    setup.config.bridge_subnet = "10.9.0.0/29".into();
    Harness::with(setup)
}

fn name(i: usize) -> String {
    format!("vm{}", i % NAMES)
}

/// How one request ended: refused when asked, or its operation's end.
#[derive(Debug)]
enum Outcome {
    Refused(banger_api::ApiError),
    Ran(Operation),
}

impl Outcome {
    fn succeeded(&self) -> bool {
        matches!(self, Outcome::Ran(op) if succeeded(op))
    }

    /// The error a user would read, when there is one.
    fn error(&self) -> Option<&banger_api::ApiError> {
        match self {
            Outcome::Refused(e) => Some(e),
            Outcome::Ran(op) => op.error.as_ref(),
        }
    }
}

/// Creates of `NAMES` names, two requests each, all at once.
async fn create_all(h: &Harness) -> Vec<(String, Outcome)> {
    let mut tasks = Vec::new();
    for i in 0..2 * NAMES {
        let vms = h.services.vms.clone();
        tasks.push(tokio::spawn(async move {
            let req = CreateVm {
                name: Some(name(i)),
                network: Some(NetworkMode::Bridge),
                ..Default::default()
            };
            let outcome = match vms.create(req) {
                Ok(op) => Outcome::Ran(finish(op).await),
                Err(e) => Outcome::Refused(e.to_api()),
            };
            (name(i), outcome)
        }));
    }
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

fn assert_no_locked_store(outcomes: &[(String, Outcome)]) {
    for (name, o) in outcomes {
        if let Some(e) = o.error() {
            assert!(
                !e.message.contains("database is locked"),
                "{name}: {}",
                e.message
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_creates_on_a_tiny_pool_give_one_vm_per_name_and_no_address_twice() {
    let h = tiny_pool();
    let outcomes = create_all(&h).await;
    assert_no_locked_store(&outcomes);

    let mut wins: HashMap<&str, usize> = HashMap::new();
    for (name, o) in &outcomes {
        if o.succeeded() {
            *wins.entry(name).or_default() += 1;
            continue;
        }
        let e = o.error().expect("a failure says why");
        let clear = e.message.contains("already exists")
            || (e.code == ErrorCode::Busy && e.message.contains("no free address"));
        assert!(clear, "{name}: {:?} {}", e.code, e.message);
    }
    assert!(
        wins.values().all(|&n| n == 1),
        "one winner per name: {wins:?}"
    );
    assert_eq!(wins.len(), POOL, "every address is used, none twice");

    let vms = h.services.vms.list().unwrap();
    assert_eq!(vms.len(), POOL, "losers leave no row");
    let ips: HashSet<_> = vms.iter().map(|v| v.ip.clone().unwrap()).collect();
    assert_eq!(ips.len(), POOL, "{vms:?}");
    let specs = h.engine.specs();
    assert_eq!(specs.len(), POOL, "only winners boot");
    let (mut taps, mut macs, mut channels) = (HashSet::new(), HashSet::new(), HashSet::new());
    for spec in &specs {
        for nic in &spec.nics {
            if let crate::engine::Nic::Tap { ifname, mac } = nic {
                assert!(taps.insert(ifname.clone()), "tap {ifname} twice");
                assert!(macs.insert(mac.clone()), "mac {mac} twice");
            }
        }
        assert!(
            channels.insert(spec.run_dir.clone()),
            "one agent channel each"
        );
    }
    assert_eq!((taps.len(), macs.len()), (POOL, POOL));
    assert_eq!(h.taps_on_bridge().len(), POOL);
    assert_eq!(h.engine.running(), POOL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_deletes_leave_one_success_per_name_and_the_pool_whole() {
    let h = tiny_pool();
    let created = create_all(&h).await;
    let live: HashSet<String> = created
        .iter()
        .filter(|(_, o)| o.succeeded())
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(live.len(), POOL);

    let deleted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..2 * NAMES {
        let (vms, engine, deleted) = (h.services.vms.clone(), h.engine.clone(), deleted.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = match vms.delete(&name(i)) {
                Ok(op) => Outcome::Ran(finish(op).await),
                Err(e) => Outcome::Refused(e.to_api()),
            };
            if outcome.succeeded() {
                // A success means its engine is gone: at least as many
                // engines stopped as deletes have succeeded.
                let done = deleted.fetch_add(1, Ordering::SeqCst) + 1;
                let running = engine.running();
                assert!(
                    running <= POOL - done,
                    "{done} deletes succeeded, {running} engines run"
                );
            }
            (name(i), outcome)
        }));
    }
    let outcomes: Vec<(String, Outcome)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_no_locked_store(&outcomes);

    let mut wins: HashMap<&str, usize> = HashMap::new();
    for (name, o) in &outcomes {
        if o.succeeded() {
            *wins.entry(name).or_default() += 1;
            continue;
        }
        let e = o.error().expect("a failure says why");
        let clear = e.message.starts_with(&format!("no vm named {name:?}"))
            || e.message.contains("was deleted by another request");
        assert!(clear, "{name}: {:?} {}", e.code, e.message);
    }
    let won: HashSet<String> = wins.keys().map(|n| n.to_string()).collect();
    assert_eq!(won, live, "each live vm is deleted once, none twice");
    assert!(wins.values().all(|&n| n == 1), "{wins:?}");

    assert!(h.services.vms.list().unwrap().is_empty());
    assert!(h.store.leased_ips().unwrap().is_empty());
    assert_eq!(h.engine.running(), 0);
    assert!(
        h.taps().is_empty(),
        "no tap left, pooled or not: {:?}",
        h.taps()
    );
    assert!(h.vm_dirs().is_empty(), "{:?}", h.vm_dirs());

    // The pool is whole again: it fits exactly as many VMs as at first.
    for i in 0..POOL {
        assert!(succeeded(
            &h.create(&format!("again{i}"), NetworkMode::Bridge).await
        ));
    }
    let op = h.create("one-too-many", NetworkMode::Bridge).await;
    assert_eq!(op.error.map(|e| e.code), Some(ErrorCode::Busy));
}

#[tokio::test]
async fn the_second_of_two_deletes_says_the_first_took_the_vm() {
    let h = tiny_pool();
    assert!(succeeded(&h.create("web", NetworkMode::Bridge).await));
    let first = h.services.vms.delete("web").unwrap();
    let second = h.services.vms.delete("web").unwrap();
    assert!(succeeded(&finish(first).await));
    assert_eq!(
        h.engine.running(),
        0,
        "success only once the engine is gone"
    );
    let err = finish(second).await.error.expect("the second fails");
    assert_eq!(
        err.message,
        "vm \"web\" was deleted by another request while this one waited: nothing is left to delete"
    );
    let again = h.services.vms.delete("web").unwrap_err();
    assert!(
        again.to_string().starts_with("no vm named \"web\""),
        "{again}"
    );
}
