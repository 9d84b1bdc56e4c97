//! The `restored` hook: run once a restored guest's agent answers, before
//! `ready`, with that boot's guest config; never on a cold boot. With the
//! standard pipeline, a restore's `identity` stage asks the (real) agent
//! to take the new identity.

use crate::agent::AgentConn;
use crate::capability::{self, Capability, Ctx, Pipeline};
use crate::error::Error;
use crate::testing::{Harness, Setup, finish, succeeded};
use banger_api::{CreateVm, NetworkMode, RestoreSnapshot, TakeSnapshot};
use banger_proto::GuestConfig;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};

/// Logs `restored <hostname>` and `ready <vm>`.
struct Watch(Arc<Mutex<Vec<String>>>);

impl Capability for Watch {
    fn name(&self) -> &'static str {
        "watch"
    }

    fn restored<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        guest: &'a GuestConfig,
        _agent: &'a AgentConn,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.0
            .lock()
            .unwrap()
            .push(format!("restored {}", guest.hostname));
        Box::pin(async { Ok(()) })
    }

    fn ready<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        _agent: &'a AgentConn,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.0
            .lock()
            .unwrap()
            .push(format!("ready {}", ctx.vm.name));
        Box::pin(async { Ok(()) })
    }
}

fn snapshot(name: &str) -> TakeSnapshot {
    TakeSnapshot {
        name: Some(name.into()),
        stop: false,
    }
}

#[tokio::test]
async fn restored_runs_before_ready_on_restores_only_with_the_new_vms_config() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let h = Harness::with(Setup {
        capabilities: Some(Box::new(move |_: &capability::Deps| {
            Pipeline::new(vec![Arc::new(Watch(log2))])
        })),
        ..Setup::default()
    });
    assert!(succeeded(&h.create("web", NetworkMode::None).await));
    assert_eq!(*log.lock().unwrap(), ["ready web"]);

    let op = h.services.vms.snapshot("web", snapshot("s")).unwrap();
    assert!(succeeded(&finish(op).await));
    let req = RestoreSnapshot {
        snapshot: "s".into(),
    };
    assert!(succeeded(
        &finish(h.services.vms.restore("web", req).unwrap()).await
    ));
    let req = CreateVm {
        name: Some("fork-1".into()),
        from_snapshot: Some("web/s".into()),
        ..Default::default()
    };
    assert!(succeeded(
        &finish(h.services.vms.create(req).unwrap()).await
    ));
    assert_eq!(
        *log.lock().unwrap(),
        [
            "ready web",
            "restored web",
            "ready web",
            "restored fork-1",
            "ready fork-1"
        ]
    );
}

#[tokio::test]
async fn a_fork_asks_its_agent_to_take_its_identity() {
    let h = Harness::new();
    assert!(succeeded(&h.create("web", NetworkMode::None).await));
    let op = h.services.vms.snapshot("web", snapshot("s")).unwrap();
    assert!(succeeded(&finish(op).await));
    let req = CreateVm {
        name: Some("fork-1".into()),
        from_snapshot: Some("web/s".into()),
        ..Default::default()
    };
    let op = finish(h.services.vms.create(req).unwrap()).await;
    assert!(succeeded(&op), "{op:?}");
    let identity = op.stages.iter().find(|s| s.name == "identity");
    assert!(identity.is_some(), "no identity stage: {op:?}");
}
