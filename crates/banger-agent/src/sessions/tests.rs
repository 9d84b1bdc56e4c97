//! Sessions end to end: the real `serve_connection` over in-memory byte
//! streams, a yamux client on the host side as the daemon would be, real
//! processes. Several connections share one `Agent`, as successive daemons
//! share the guest's agent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use banger_proto::{
    ErrorBody, ExitStatus, Frame, FrameKind, Request, SessionInfo, SessionRequest, SessionState,
};

use crate::{Agent, Power};

struct NoPower;

impl Power for NoPower {
    fn shutdown(&self, _reboot: bool) {}
}

fn agent(scrollback: usize) -> Arc<Agent> {
    // Orphans come to this process, as they come to the agent as PID 1.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).ok();
    let mut agent = Agent::new(Arc::new(NoPower));
    agent.exec.cwd = std::env::temp_dir();
    agent.sessions = super::Sessions::new(scrollback);
    Arc::new(agent)
}

use crate::channel::tests::{Client, Stream};

async fn connect(agent: &Arc<Agent>) -> Client {
    crate::channel::tests::connect_to(b"", agent.clone()).await
}

async fn request(client: &Client, req: SessionRequest) -> Stream {
    let mut stream = client.open().await;
    let envelope = banger_proto::Envelope::new(Request::Session(req));
    send(&mut stream, Frame::json(FrameKind::Request, &envelope)).await;
    stream
}

async fn send(stream: &mut Stream, frame: Frame) {
    banger_proto::write_frame(stream, &frame).await.unwrap();
}

async fn next(stream: &mut Stream) -> Option<Frame> {
    tokio::time::timeout(Duration::from_secs(10), banger_proto::read_frame(stream))
        .await
        .expect("a frame within 10 s")
        .unwrap()
}

async fn response<T: serde::de::DeserializeOwned>(stream: &mut Stream) -> T {
    let frame = next(stream).await.expect("a frame");
    let text = String::from_utf8_lossy(&frame.payload).into_owned();
    assert_eq!(frame.kind, FrameKind::Response, "{text}");
    frame.parse().unwrap()
}

async fn error(stream: &mut Stream) -> ErrorBody {
    let frame = next(stream).await.expect("a frame");
    assert_eq!(frame.kind, FrameKind::Error);
    frame.parse().unwrap()
}

/// Reads `Stdout` frames until the output so far contains `needle`.
async fn read_until(stream: &mut Stream, needle: &str) -> String {
    let mut out = String::new();
    while !out.contains(needle) {
        let frame = next(stream).await.expect("more output");
        assert_eq!(frame.kind, FrameKind::Stdout, "{out:?}");
        out.push_str(&String::from_utf8_lossy(&frame.payload));
    }
    out
}

/// Everything up to the end of the stream: output, and the exit if sent.
async fn rest(stream: &mut Stream) -> (String, Option<ExitStatus>) {
    let (mut out, mut exit) = (String::new(), None);
    while let Some(frame) = next(stream).await {
        match frame.kind {
            FrameKind::Stdout => out.push_str(&String::from_utf8_lossy(&frame.payload)),
            FrameKind::Exit => exit = Some(frame.parse().unwrap()),
            other => panic!("unexpected {other:?} frame"),
        }
    }
    (out, exit)
}

fn start(name: &str, argv: &[&str]) -> SessionRequest {
    SessionRequest::Start {
        name: name.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: None,
        env: vec![],
    }
}

async fn start_ok(client: &Client, name: &str, argv: &[&str]) -> SessionInfo {
    response(&mut request(client, start(name, argv)).await).await
}

async fn list(client: &Client) -> Vec<SessionInfo> {
    response(&mut request(client, SessionRequest::List).await).await
}

async fn info(client: &Client, name: &str) -> SessionInfo {
    let all = list(client).await;
    all.into_iter().find(|i| i.name == name).expect("listed")
}

async fn stop(client: &Client, name: &str, grace_secs: u32) -> SessionInfo {
    let req = SessionRequest::Stop {
        name: name.into(),
        grace_secs: Some(grace_secs),
    };
    response(&mut request(client, req).await).await
}

fn attach(name: &str) -> SessionRequest {
    SessionRequest::Attach {
        name: name.into(),
        from: None,
    }
}

fn logs(name: &str, follow: bool, from: Option<u64>) -> SessionRequest {
    SessionRequest::Logs {
        name: name.into(),
        follow,
        from,
    }
}

#[tokio::test]
async fn a_started_session_is_listed_as_running_with_cwd_and_env() {
    let agent = agent(super::SCROLLBACK_BYTES);
    let client = connect(&agent).await;
    let req = SessionRequest::Start {
        name: "web".into(),
        argv: vec!["sh".into(), "-c".into(), "echo $FOO; pwd; sleep 30".into()],
        cwd: Some("/".into()),
        env: vec![("FOO".into(), "bar".into())],
    };
    let started: SessionInfo = response(&mut request(&client, req).await).await;
    assert_eq!(started.state, SessionState::Running);

    let listed = list(&client).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].cwd.as_str()),
        ("web", "/")
    );
    assert_eq!(listed[0].state, SessionState::Running);
    assert!(listed[0].pid.is_some() && listed[0].started_at > 0);
    let mut stream = request(&client, attach("web")).await;
    let _: SessionInfo = response(&mut stream).await;
    assert_eq!(read_until(&mut stream, "/\n").await, "bar\n/\n");
    stop(&client, "web", 1).await;
}

#[tokio::test]
async fn a_missing_cwd_fails_the_preflight_and_is_listed_as_failed() {
    let agent = agent(super::SCROLLBACK_BYTES);
    let client = connect(&agent).await;
    let req = SessionRequest::Start {
        name: "app".into(),
        argv: vec!["true".into()],
        cwd: Some("/root/nope-nope".into()),
        env: vec![],
    };
    let err = error(&mut request(&client, req).await).await;
    assert_eq!(err.code, "preflight_failed");
    assert_eq!(err.message, "cwd /root/nope-nope does not exist");

    let listed = info(&client, "app").await;
    assert_eq!(listed.state, SessionState::Failed);
    assert_eq!(listed.error.as_deref(), Some(err.message.as_str()));
    assert_eq!((listed.pid, listed.exit_code), (None, None));
}

#[tokio::test]
async fn a_missing_command_fails_the_preflight_and_is_listed_as_failed() {
    let agent = agent(super::SCROLLBACK_BYTES);
    let client = connect(&agent).await;
    let err = error(&mut request(&client, start("build", &["cargoo", "build"])).await).await;
    assert_eq!(err.code, "preflight_failed");
    assert_eq!(err.message, r#"command "cargoo" not found in PATH"#);
    let listed = info(&client, "build").await;
    assert_eq!(listed.state, SessionState::Failed);
    assert_eq!(listed.error.as_deref(), Some(err.message.as_str()));

    // The name is free again: a failed session is replaced by a new start.
    let again = start_ok(&client, "build", &["true"]).await;
    assert_eq!(again.state, SessionState::Running);
    assert_eq!(list(&client).await.len(), 1);
}

#[tokio::test]
async fn names_are_checked_and_a_running_name_is_not_taken_twice() {
    let agent = agent(super::SCROLLBACK_BYTES);
    let client = connect(&agent).await;
    let err = error(&mut request(&client, start("Bad Name", &["true"])).await).await;
    assert_eq!(err.code, "bad_request");
    start_ok(&client, "one", &["sleep", "30"]).await;
    let err = error(&mut request(&client, start("one", &["true"])).await).await;
    assert_eq!(err.code, "conflict");
    let err = error(&mut request(&client, attach("nobody")).await).await;
    assert_eq!(err.code, "not_found");
    stop(&client, "one", 1).await;
}

#[tokio::test]
async fn attachers_get_scrollback_then_live_output_and_feed_stdin() {
    let agent = agent(super::SCROLLBACK_BYTES);
    let client = connect(&agent).await;
    start_ok(&client, "cat", &["sh", "-c", "echo ready; exec cat"]).await;

    let mut first = request(&client, attach("cat")).await;
    let _: SessionInfo = response(&mut first).await;
    assert_eq!(read_until(&mut first, "ready\n").await, "ready\n");
    send(
        &mut first,
        Frame::new(FrameKind::Stdin, b"hello\n".to_vec()),
    )
    .await;
    assert_eq!(read_until(&mut first, "hello\n").await, "hello\n");

    let mut second = request(&client, attach("cat")).await;
    let _: SessionInfo = response(&mut second).await;
    assert_eq!(read_until(&mut second, "hello\n").await, "ready\nhello\n");
    send(&mut second, Frame::new(FrameKind::Stdin, b"two\n".to_vec())).await;
    assert_eq!(read_until(&mut first, "two\n").await, "two\n");
    assert_eq!(read_until(&mut second, "two\n").await, "two\n");

    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(info(&client, "cat").await.state, SessionState::Running);
    send(
        &mut first,
        Frame::new(FrameKind::Stdin, b"three\n".to_vec()),
    )
    .await;
    assert_eq!(read_until(&mut first, "three\n").await, "three\n");

    send(&mut first, Frame::new(FrameKind::StdinEof, Vec::new())).await;
    let (out, exit) = rest(&mut first).await;
    assert_eq!((out.as_str(), exit.map(|e| e.code)), ("", Some(0)));
}

#[tokio::test]
async fn a_session_outlives_its_connection_and_is_attached_from_a_new_one() {
    let agent = agent(super::SCROLLBACK_BYTES);
    let old = connect(&agent).await;
    let script = "echo one; read x; echo got $x; exit 4";
    start_ok(&old, "keep", &["sh", "-c", script]).await;
    let mut attached = request(&old, attach("keep")).await;
    let _: SessionInfo = response(&mut attached).await;
    read_until(&mut attached, "one\n").await;
    drop(attached);
    drop(old);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let new = connect(&agent).await;
    assert_eq!(info(&new, "keep").await.state, SessionState::Running);
    let mut stream = request(&new, attach("keep")).await;
    let _: SessionInfo = response(&mut stream).await;
    assert_eq!(read_until(&mut stream, "one\n").await, "one\n");
    send(&mut stream, Frame::new(FrameKind::Stdin, b"two\n".to_vec())).await;
    let (out, exit) = rest(&mut stream).await;
    assert_eq!(out, "got two\n");
    assert_eq!(
        exit,
        Some(ExitStatus {
            code: 4,
            signal: None
        })
    );
    let ended = info(&new, "keep").await;
    assert_eq!(
        (ended.state, ended.exit_code),
        (SessionState::Exited, Some(4))
    );
    assert!(ended.ended_at.is_some());
}

#[tokio::test]
async fn logs_without_follow_end_after_the_scrollback() {
    let agent = agent(super::SCROLLBACK_BYTES);
    let client = connect(&agent).await;
    start_ok(&client, "log", &["sh", "-c", "echo a; echo bb; sleep 30"]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while info(&client, "log").await.output_bytes < 5 {
        assert!(Instant::now() < deadline, "output within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stream = request(&client, logs("log", false, None)).await;
    let _: SessionInfo = response(&mut stream).await;
    assert_eq!(rest(&mut stream).await, ("a\nbb\n".into(), None));

    let mut stream = request(&client, logs("log", false, Some(2))).await;
    let _: SessionInfo = response(&mut stream).await;
    assert_eq!(rest(&mut stream).await, ("bb\n".into(), None));
    stop(&client, "log", 1).await;
}

#[tokio::test]
async fn logs_with_follow_see_new_lines_and_the_exit() {
    let agent = agent(super::SCROLLBACK_BYTES);
    let client = connect(&agent).await;
    let script = "echo a; sleep 0.3; echo b; sleep 0.3; echo c >&2; exit 3";
    start_ok(&client, "f", &["sh", "-c", script]).await;
    let mut stream = request(&client, logs("f", true, None)).await;
    let _: SessionInfo = response(&mut stream).await;
    let (out, exit) = rest(&mut stream).await;
    assert_eq!(out, "a\nb\nc\n");
    assert_eq!(
        exit,
        Some(ExitStatus {
            code: 3,
            signal: None
        })
    );
}

#[tokio::test]
async fn stop_terms_and_answers_once_the_process_is_gone() {
    let agent = agent(super::SCROLLBACK_BYTES);
    let client = connect(&agent).await;
    start_ok(&client, "s", &["sleep", "100"]).await;
    let stopped = stop(&client, "s", 10).await;
    assert_eq!(stopped.state, SessionState::Exited);
    assert_eq!((stopped.exit_code, stopped.signal), (Some(143), Some(15)));
    // Stopping an ended session answers its info.
    assert_eq!(stop(&client, "s", 10).await.signal, Some(15));
}

#[tokio::test]
async fn stop_kills_what_ignores_term_after_the_grace_period() {
    let agent = agent(super::SCROLLBACK_BYTES);
    let client = connect(&agent).await;
    let script = r#"trap "" TERM; echo armed; sleep 100"#;
    start_ok(&client, "stubborn", &["sh", "-c", script]).await;
    let mut stream = request(&client, logs("stubborn", true, None)).await;
    let _: SessionInfo = response(&mut stream).await;
    read_until(&mut stream, "armed").await;

    let began = Instant::now();
    let stopped = stop(&client, "stubborn", 1).await;
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!((stopped.exit_code, stopped.signal), (Some(137), Some(9)));
    assert_eq!(rest(&mut stream).await.1.map(|e| e.signal), Some(Some(9)));
}

#[tokio::test]
async fn output_beyond_the_scrollback_is_forgotten_oldest_first() {
    const BOUND: usize = 64 * 1024;
    let agent = agent(BOUND);
    let client = connect(&agent).await;
    let script = "yes 0123456789 | head -c 300000; echo END";
    start_ok(&client, "chatty", &["sh", "-c", script]).await;
    let mut follow = request(&client, logs("chatty", true, None)).await;
    let _: SessionInfo = response(&mut follow).await;
    let (_, exit) = rest(&mut follow).await;
    assert_eq!(exit.map(|e| e.code), Some(0));

    let ended = info(&client, "chatty").await;
    assert_eq!(ended.output_bytes, 300_004);
    assert_eq!(ended.retained_from, 300_004 - BOUND as u64);
    let mut stream = request(&client, logs("chatty", false, Some(0))).await;
    let _: SessionInfo = response(&mut stream).await;
    let (kept, _) = rest(&mut stream).await;
    assert_eq!(kept.len(), BOUND);
    assert!(
        kept.ends_with("\n01234567END\n"),
        "{}",
        &kept[kept.len() - 20..]
    );
}

#[tokio::test]
async fn only_the_latest_ended_sessions_are_remembered() {
    let agent = agent(1024);
    let client = connect(&agent).await;
    for i in 0..super::KEEP_ENDED + 3 {
        let err = error(&mut request(&client, start(&format!("f{i}"), &["nope-x"])).await).await;
        assert_eq!(err.code, "preflight_failed");
    }
    let names: Vec<String> = list(&client).await.into_iter().map(|i| i.name).collect();
    assert_eq!(names.len(), super::KEEP_ENDED);
    assert!(!names.contains(&"f0".to_string()), "{names:?}");
}
