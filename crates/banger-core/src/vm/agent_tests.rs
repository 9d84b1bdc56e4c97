//! The agent session as the daemon uses it: a session that answers the
//! handshake and then nothing (a guest that took the host's reconnect for
//! a disconnect) is dropped after [`super::lifecycle::FIRST_ANSWER`] and
//! the request sent on a fresh one, so a command never waits forever.

use crate::engine::fake::FakeFault;
use crate::testing::Harness;
use banger_api::NetworkMode;
use banger_proto::{ExecRequest, FrameKind, Request};

fn exec_true() -> Request {
    Request::Exec(ExecRequest {
        argv: vec!["true".into()],
        cwd: Some("/".into()),
        ..Default::default()
    })
}

#[tokio::test]
async fn a_session_that_stops_answering_is_replaced_and_the_command_runs() {
    let h = Harness::new();
    assert!(crate::testing::succeeded(
        &h.create("web", NetworkMode::None).await
    ));
    // The daemon's session goes (a restart), and the next one goes deaf.
    h.services.vms.agent("web").await.unwrap().mark_closed();
    h.engine.fail(FakeFault::DeafAgent);
    let (first, took) = exec_true_on(&h).await;
    assert_eq!(first, FrameKind::Started, "answered on a fresh session");
    assert!(
        took >= super::lifecycle::FIRST_ANSWER,
        "the deaf one was tried first"
    );
    // The fresh session serves what follows at once.
    let (first, took) = exec_true_on(&h).await;
    assert_eq!(first, FrameKind::Started);
    assert!(took < super::lifecycle::FIRST_ANSWER);
}

/// Runs `true` in `web` through the daemon's agent request: the kind of
/// the agent's first answer, and how long it took.
async fn exec_true_on(h: &Harness) -> (FrameKind, std::time::Duration) {
    let t0 = std::time::Instant::now();
    let (_stream, first) = h
        .services
        .vms
        .agent_request("web", exec_true())
        .await
        .expect("the agent answered");
    (first.kind, t0.elapsed())
}
