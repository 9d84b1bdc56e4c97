//! The host⇄agent contract without a VM: the daemon's agent client
//! (`banger_core::agent`) against the real agent server
//! (`banger_agent::serve_connection`) over a socket pair.

use banger_core::agent::AgentConn;
use banger_proto::{ExecRequest, Frame, FrameKind, Request};
use std::sync::{Arc, Mutex};

struct RecordPower(Mutex<Vec<bool>>);

impl banger_agent::Power for RecordPower {
    fn shutdown(&self, reboot: bool) {
        self.0.lock().unwrap().push(reboot);
    }
}

async fn connected() -> (AgentConn, Arc<RecordPower>) {
    let (host, guest) = tokio::net::UnixStream::pair().unwrap();
    let power = Arc::new(RecordPower(Mutex::new(Vec::new())));
    let agent = Arc::new(banger_agent::Agent::new(power.clone()));
    tokio::spawn(banger_agent::serve_connection(guest, agent));
    let conn = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        AgentConn::handshake(host),
    )
    .await
    .expect("handshake in time")
    .unwrap();
    (conn, power)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_after_the_handshake() {
    let (conn, _) = connected().await;
    let h = tokio::time::timeout(std::time::Duration::from_secs(5), conn.health())
        .await
        .expect("health in time")
        .unwrap();
    assert_eq!(h.protocol, banger_proto::PROTOCOL_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_output_and_exit_code() {
    let (conn, _) = connected().await;
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), "echo hi; exit 5".into()],
        cwd: Some("/".into()),
        ..Default::default()
    };
    let mut s = conn.request(Request::Exec(req)).await.unwrap();
    let mut out = Vec::new();
    let code = loop {
        let f: Frame = banger_proto::read_frame(&mut s)
            .await
            .unwrap()
            .expect("frame");
        match f.kind {
            FrameKind::Started => {}
            FrameKind::Stdout => out.extend_from_slice(&f.payload),
            FrameKind::Exit => break f.parse::<banger_proto::ExitStatus>().unwrap().code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!((String::from_utf8_lossy(&out).as_ref(), code), ("hi\n", 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reaches_the_guest_power_switch() {
    let (conn, power) = connected().await;
    conn.shutdown(false).await.unwrap();
    for _ in 0..100 {
        if !power.0.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(*power.0.lock().unwrap(), vec![false]);
}

/// The agent as it runs in the guest: a current-thread runtime serving a
/// raw non-blocking descriptor (`FdStream`), here one end of a socket pair.
#[test]
fn agent_on_a_raw_descriptor_in_a_current_thread_runtime_answers() {
    let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let port: std::os::fd::OwnedFd = guest.into();
            let power = Arc::new(RecordPower(Mutex::new(Vec::new())));
            banger_agent::port::serve_forever(port, Arc::new(banger_agent::Agent::new(power))).await
        })
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        host.set_nonblocking(true).unwrap();
        let host = tokio::net::UnixStream::from_std(host).unwrap();
        let conn = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            AgentConn::handshake(host),
        )
        .await
        .expect("handshake in time")
        .unwrap();
        let h = tokio::time::timeout(std::time::Duration::from_secs(5), conn.health())
            .await
            .expect("health in time")
            .unwrap();
        assert_eq!(h.protocol, banger_proto::PROTOCOL_VERSION);
    });
}
