//! The agent server end to end over an in-memory byte stream, with a yamux
//! client on the other side as the daemon would be. Runs as a normal
//! process: exec'd commands are real, power-off is a fake.

use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use banger_proto::{
    ErrorBody, ExecRequest, ExitStatus, Frame, FrameKind, HealthResponse, PROTOCOL_VERSION,
    Request, Resize, SignalMsg, Started,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::Compat;

use super::*;

/// Records shutdown requests instead of powering anything off.
#[derive(Default)]
struct FakePower(Mutex<Vec<bool>>);

impl crate::Power for FakePower {
    fn shutdown(&self, reboot: bool) {
        self.0.lock().unwrap().push(reboot);
    }
}

fn agent(power: Arc<FakePower>) -> Arc<Agent> {
    // Orphans of exec'd commands then come to this process, as they come to
    // the agent as PID 1, and the reaper collects them.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).ok();
    let mut agent = Agent::new(power);
    agent.exec.cwd = std::env::temp_dir();
    Arc::new(agent)
}

pub(crate) type Stream = Compat<yamux::Stream>;

/// The host side: a yamux client whose connection a background task drives.
pub(crate) struct Client {
    open: mpsc::Sender<oneshot::Sender<yamux::Stream>>,
}

impl Client {
    pub(crate) async fn open(&self) -> Stream {
        let (tx, rx) = oneshot::channel();
        self.open.send(tx).await.unwrap();
        rx.await.unwrap().compat()
    }
}

/// Starts the agent's channel on one end of a duplex pipe and connects to it,
/// optionally writing `garbage` before the sync line.
async fn connect_with(garbage: &[u8], power: Arc<FakePower>) -> Client {
    connect_to(garbage, agent(power)).await
}

async fn connect() -> Client {
    connect_with(b"", Arc::default()).await
}

/// Serves `agent` on one end of a duplex pipe and connects to it as the
/// daemon would, after writing `garbage`; the sessions tests use it too.
pub(crate) async fn connect_to(garbage: &[u8], agent: Arc<crate::Agent>) -> Client {
    let (host, guest) = tokio::io::duplex(256 * 1024);
    tokio::spawn(serve_connection(guest, agent));
    let mut host = host;
    host.write_all(garbage).await.unwrap();
    host.write_all(banger_proto::sync_line("n0nce").as_bytes())
        .await
        .unwrap();
    let mut line = Vec::new();
    loop {
        let b = host.read_u8().await.unwrap();
        if b == b'\n' {
            break;
        }
        line.push(b);
    }
    let line = String::from_utf8(line).unwrap();
    assert_eq!(
        banger_proto::parse_ready(&line),
        Some(("n0nce", PROTOCOL_VERSION))
    );
    Client {
        open: drive(yamux::Connection::new(
            host.compat(),
            yamux::Config::default(),
            yamux::Mode::Client,
        )),
    }
}

fn drive(
    mut conn: yamux::Connection<Compat<DuplexStream>>,
) -> mpsc::Sender<oneshot::Sender<yamux::Stream>> {
    let (tx, mut rx) = mpsc::channel::<oneshot::Sender<yamux::Stream>>(1);
    tokio::spawn(async move {
        let mut waiting: Option<oneshot::Sender<yamux::Stream>> = None;
        poll_fn(|cx| {
            loop {
                if waiting.is_none() {
                    match rx.poll_recv(cx) {
                        Poll::Ready(Some(w)) => waiting = Some(w),
                        Poll::Ready(None) => return Poll::Ready(()),
                        Poll::Pending => {}
                    }
                }
                if waiting.is_some() {
                    match conn.poll_new_outbound(cx) {
                        Poll::Ready(Ok(stream)) => {
                            let _ = waiting.take().unwrap().send(stream);
                            continue;
                        }
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Pending => {}
                    }
                }
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    });
    tx
}

async fn send(stream: &mut Stream, frame: Frame) {
    banger_proto::write_frame(stream, &frame).await.unwrap();
}

async fn request(client: &Client, request: Request) -> Stream {
    let mut stream = client.open().await;
    send(
        &mut stream,
        Frame::json(FrameKind::Request, &banger_proto::Envelope::new(request)),
    )
    .await;
    stream
}

async fn next(stream: &mut Stream) -> Frame {
    tokio::time::timeout(Duration::from_secs(10), banger_proto::read_frame(stream))
        .await
        .expect("a frame within 10 s")
        .unwrap()
        .expect("a frame, not end of stream")
}

fn exec(argv: &[&str]) -> Request {
    Request::Exec(ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

/// Everything up to and including the Exit frame: (stdout, stderr, exit).
async fn collect(stream: &mut Stream) -> (String, String, ExitStatus) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let frame = next(stream).await;
        match frame.kind {
            FrameKind::Stdout => out.extend_from_slice(&frame.payload),
            FrameKind::Stderr => err.extend_from_slice(&frame.payload),
            FrameKind::Exit => {
                let exit = frame.parse().unwrap();
                return (
                    String::from_utf8(out).unwrap(),
                    String::from_utf8(err).unwrap(),
                    exit,
                );
            }
            other => panic!(
                "unexpected {other:?} frame: {}",
                String::from_utf8_lossy(&frame.payload)
            ),
        }
    }
}

async fn started(stream: &mut Stream) -> u32 {
    let frame = next(stream).await;
    assert_eq!(
        frame.kind,
        FrameKind::Started,
        "{}",
        String::from_utf8_lossy(&frame.payload)
    );
    frame.parse::<Started>().unwrap().pid
}

#[tokio::test]
async fn health_answers_with_version_and_uptime() {
    let client = connect().await;
    let mut stream = request(&client, Request::Health).await;
    let frame = next(&mut stream).await;
    assert_eq!(frame.kind, FrameKind::Response);
    let health: HealthResponse = frame.parse().unwrap();
    assert_eq!(health.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(health.protocol, PROTOCOL_VERSION);
    assert!(!health.hostname.is_empty());
    assert!(health.uptime_ms > 0);
    assert_eq!(
        banger_proto::read_frame(&mut stream).await.unwrap(),
        None,
        "stream closed after the answer"
    );
}

#[tokio::test]
async fn exec_streams_stdout_and_stderr_and_reports_the_exit_code() {
    let client = connect().await;
    let mut stream = request(
        &client,
        exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
    )
    .await;
    started(&mut stream).await;
    let (out, err, exit) = collect(&mut stream).await;
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(
        exit,
        ExitStatus {
            code: 3,
            signal: None
        }
    );
    assert_eq!(
        banger_proto::read_frame(&mut stream).await.unwrap(),
        None,
        "stream closed after Exit"
    );
}

#[tokio::test]
async fn a_command_ending_lets_the_guests_own_work_start_and_health_does_not() {
    let agent = agent(Arc::default());
    let client = connect_to(b"", agent.clone()).await;
    let mut stream = request(&client, Request::Health).await;
    assert_eq!(next(&mut stream).await.kind, FrameKind::Response);
    assert!(!agent.background.is_open(), "a health check is no command");
    let mut stream = request(&client, exec(&["true"])).await;
    started(&mut stream).await;
    collect(&mut stream).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !agent.background.is_open() {
        assert!(std::time::Instant::now() < deadline, "the gate stayed shut");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn exec_gets_the_default_environment_and_the_requested_one() {
    let client = connect().await;
    let req = ExecRequest {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo $HOME $TERM $FOO; pwd".into(),
        ],
        env: vec![("FOO".into(), "bar".into())],
        cwd: Some("/".into()),
        ..Default::default()
    };
    let mut stream = request(&client, Request::Exec(req)).await;
    started(&mut stream).await;
    let (out, _, exit) = collect(&mut stream).await;
    assert_eq!(out, "/root xterm-256color bar\n/\n");
    assert_eq!(exit.code, 0);
}

#[tokio::test]
async fn stdin_is_piped_to_the_process() {
    let client = connect().await;
    let mut stream = request(&client, exec(&["cat"])).await;
    started(&mut stream).await;
    send(
        &mut stream,
        Frame::new(FrameKind::Stdin, b"hello\n".to_vec()),
    )
    .await;
    send(
        &mut stream,
        Frame::new(FrameKind::Stdin, b"world\n".to_vec()),
    )
    .await;
    send(&mut stream, Frame::new(FrameKind::StdinEof, Vec::new())).await;
    let (out, _, exit) = collect(&mut stream).await;
    assert_eq!(out, "hello\nworld\n");
    assert_eq!(exit.code, 0);
}

#[tokio::test]
async fn signal_frames_reach_the_process() {
    let client = connect().await;
    for (signal, code) in [(15, 143), (2, 130)] {
        let mut stream = request(&client, exec(&["sleep", "100"])).await;
        started(&mut stream).await;
        send(
            &mut stream,
            Frame::json(FrameKind::Signal, &SignalMsg { signal }),
        )
        .await;
        let (_, _, exit) = collect(&mut stream).await;
        assert_eq!(
            exit,
            ExitStatus {
                code,
                signal: Some(signal)
            }
        );
    }
}

#[tokio::test]
async fn dropping_the_stream_kills_the_process() {
    let client = connect().await;
    let mut stream = request(&client, exec(&["sleep", "100"])).await;
    let pid = started(&mut stream).await;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(stream);
    wait_until_gone(pid).await;
}

#[tokio::test]
async fn ending_the_connection_kills_the_processes_of_its_streams() {
    let (host, guest) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve_connection(guest, agent(Arc::default())));
    let (mut host_rd, mut host_wr) = tokio::io::split(host);
    host_wr
        .write_all(banger_proto::sync_line("x").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_line(&mut host_rd).await, "BANGER-READY x 1");
    let host = host_rd.unsplit(host_wr);
    let client = Client {
        open: drive(yamux::Connection::new(
            host.compat(),
            Default::default(),
            yamux::Mode::Client,
        )),
    };
    let mut stream = request(&client, exec(&["sleep", "100"])).await;
    let pid = started(&mut stream).await;
    // The host hangs up: its connection and every stream go away.
    drop(client);
    drop(stream);
    served.await.unwrap().ok();
    wait_until_gone(pid).await;
}

async fn wait_until_gone(pid: u32) {
    for _ in 0..500 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("process {pid} still exists 5 s after its stream closed");
}

#[tokio::test]
async fn a_wrong_protocol_version_gets_protocol_mismatch() {
    let client = connect().await;
    let mut stream = client.open().await;
    let body = format!(
        r#"{{"version":{},"request":{{"op":"teleport"}}}}"#,
        PROTOCOL_VERSION + 1
    );
    send(
        &mut stream,
        Frame::new(FrameKind::Request, body.into_bytes()),
    )
    .await;
    let frame = next(&mut stream).await;
    assert_eq!(frame.kind, FrameKind::Error);
    let err: ErrorBody = frame.parse().unwrap();
    assert_eq!(err.code, "protocol_mismatch");
    assert!(
        err.message
            .contains(&format!("protocol {}", PROTOCOL_VERSION + 1)),
        "{}",
        err.message
    );
    assert!(
        err.message
            .contains(&format!("protocol {PROTOCOL_VERSION}")),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_missing_program_gets_not_found() {
    let client = connect().await;
    let mut stream = request(&client, exec(&["no-such-program-anywhere"])).await;
    let frame = next(&mut stream).await;
    assert_eq!(frame.kind, FrameKind::Error);
    assert_eq!(frame.parse::<ErrorBody>().unwrap().code, "not_found");
}

#[tokio::test]
async fn stale_bytes_before_the_sync_line_are_skipped() {
    let garbage: Vec<u8> = b"\x00\x01yamux leftovers\nBANGER-SYNC stale-without-newline"
        .iter()
        .copied()
        .chain((0..10_000u32).map(|i| (i % 251) as u8))
        .collect();
    let client = connect_with(&garbage, Arc::default()).await;
    let mut stream = request(&client, Request::Health).await;
    assert_eq!(next(&mut stream).await.kind, FrameKind::Response);
}

#[tokio::test]
async fn a_sync_line_split_across_reads_is_found() {
    let (mut host, mut guest) = tokio::io::duplex(1024);
    let shake = tokio::spawn(async move { handshake(&mut guest, Vec::new()).await.unwrap() });
    for chunk in [&b"junkBANGER-SY"[..], b"NC abc", b"\nafter"] {
        host.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (nonce, leftover) = shake.await.unwrap().unwrap();
    assert_eq!(nonce, "abc");
    assert_eq!(leftover, b"after");
}

#[tokio::test]
async fn a_new_sync_line_inside_a_connection_starts_a_new_one() {
    let (host, guest) = tokio::io::duplex(64 * 1024);
    let (mut host_rd, mut host_wr) = tokio::io::split(host);
    let server = tokio::spawn(async move {
        let agent = agent(Arc::default());
        let shared = SharedIo(Arc::new(Mutex::new(guest)));
        let mut channel = Channel::default();
        let first = channel.serve(shared.clone(), agent.clone()).await;
        assert!(first.is_err(), "a sync line is not yamux");
        assert!(
            channel.host_reconnected(),
            "said as a reconnect, not an error"
        );
        channel.serve(shared, agent).await
    });
    host_wr
        .write_all(banger_proto::sync_line("first").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_line(&mut host_rd).await, "BANGER-READY first 1");
    // The host restarted without the guest seeing a hang-up.
    host_wr
        .write_all(banger_proto::sync_line("second").as_bytes())
        .await
        .unwrap();
    // As the host does: skip what the dying connection sent until our ready line.
    while !read_line(&mut host_rd)
        .await
        .ends_with("BANGER-READY second 1")
    {}
    drop(host_wr);
    drop(host_rd);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_sync_line_whose_answer_fails_is_answered_on_the_next_handle() {
    let (host, guest) = tokio::io::duplex(64 * 1024);
    let (mut host_rd, mut host_wr) = tokio::io::split(host);
    let server = tokio::spawn(async move {
        let agent = agent(Arc::default());
        let shared = SharedIo(Arc::new(Mutex::new(guest)));
        let handle = |hung_up| Flaky {
            io: shared.clone(),
            hung_up,
        };
        let mut channel = Channel::default();
        // The port read the host's line, then the fresh handle made to
        // answer it saw no host yet (virtio-console's order of events).
        let first = channel
            .serve_reopening(handle(false), |_| Ok(handle(true)), agent.clone())
            .await;
        assert!(first.is_err(), "the answer could not be written");
        assert!(channel.answering(), "the line is kept to answer");
        // The next handle works: the kept line is answered, nothing read first.
        channel
            .serve_reopening(handle(false), Ok, agent.clone())
            .await
            .unwrap();
        assert!(!channel.answering());
    });
    host_wr
        .write_all(banger_proto::sync_line("once").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_line(&mut host_rd).await, "BANGER-READY once 1");
    drop(host_wr);
    drop(host_rd);
    server.await.unwrap();
}

/// A handle on the shared end whose writes fail as a hung-up port's do.
struct Flaky {
    io: SharedIo,
    hung_up: bool,
}

impl AsyncRead for Flaky {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Flaky {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.hung_up {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads up to a newline, lossily: bytes of a dying yamux connection may come first.
async fn read_line(r: &mut ReadHalf<DuplexStream>) -> String {
    let mut line = Vec::new();
    loop {
        let b = tokio::time::timeout(Duration::from_secs(5), r.read_u8())
            .await
            .expect("a line within 5 s")
            .unwrap();
        if b == b'\n' {
            return String::from_utf8_lossy(&line).into_owned();
        }
        line.push(b);
    }
}

/// One duplex end shared by two connections in turn, as the port is.
#[derive(Clone)]
struct SharedIo(Arc<Mutex<DuplexStream>>);

impl AsyncRead for SharedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.lock().unwrap()).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.lock().unwrap()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_tty_exec_runs_on_a_terminal_of_the_requested_size() {
    let client = connect().await;
    let req = ExecRequest {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "test -t 0 && test -t 1 && tty && stty size && : < /dev/tty".into(),
        ],
        tty: true,
        size: Some(Resize { rows: 30, cols: 90 }),
        ..Default::default()
    };
    let mut stream = request(&client, Request::Exec(req)).await;
    started(&mut stream).await;
    let (out, err, exit) = collect(&mut stream).await;
    assert_eq!(exit.code, 0, "output: {out}");
    assert!(err.is_empty(), "a tty exec sends no stderr frames");
    assert!(out.starts_with("/dev/pts/"), "{out}");
    assert!(out.contains("30 90"), "{out}");
}

#[tokio::test]
async fn a_tty_exec_takes_input_and_resizes() {
    let client = connect().await;
    let req = ExecRequest {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "read line; echo got:$line; stty size".into(),
        ],
        tty: true,
        size: Some(Resize { rows: 24, cols: 80 }),
        ..Default::default()
    };
    let mut stream = request(&client, Request::Exec(req)).await;
    started(&mut stream).await;
    send(
        &mut stream,
        Frame::json(
            FrameKind::Resize,
            &Resize {
                rows: 50,
                cols: 120,
            },
        ),
    )
    .await;
    send(&mut stream, Frame::new(FrameKind::Stdin, b"hi\n".to_vec())).await;
    let (out, _, exit) = collect(&mut stream).await;
    assert_eq!(exit.code, 0, "output: {out}");
    assert!(out.contains("got:hi"), "{out}");
    assert!(out.contains("50 120"), "{out}");
}

#[tokio::test]
async fn shutdown_answers_then_powers_off() {
    let power = Arc::new(FakePower::default());
    let client = connect_with(b"", power.clone()).await;
    let mut stream = request(&client, Request::Shutdown { reboot: true }).await;
    let frame = next(&mut stream).await;
    assert_eq!(frame.kind, FrameKind::Response);
    assert_eq!(frame.payload, b"{}");
    for _ in 0..200 {
        if !power.0.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*power.0.lock().unwrap(), [true]);
}

#[tokio::test]
async fn large_output_arrives_in_bounded_frames() {
    let client = connect().await;
    let mut stream = request(&client, exec(&["sh", "-c", "head -c 300000 /dev/zero"])).await;
    started(&mut stream).await;
    let mut total = 0;
    loop {
        let frame = next(&mut stream).await;
        match frame.kind {
            FrameKind::Stdout => {
                assert!(frame.payload.len() <= crate::exec::MAX_OUTPUT_FRAME);
                total += frame.payload.len();
            }
            FrameKind::Exit => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(total, 300_000);
}

#[tokio::test]
async fn a_file_that_is_not_executable_gets_spawn_failed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes"), "hello").unwrap();
    let client = connect().await;
    let path = dir.path().join("notes").display().to_string();
    let mut stream = request(&client, exec(&[&path])).await;
    let frame = next(&mut stream).await;
    assert_eq!(frame.kind, FrameKind::Error);
    assert_eq!(frame.parse::<ErrorBody>().unwrap().code, "spawn_failed");
}

#[tokio::test]
async fn a_background_child_holding_stdout_does_not_hold_up_the_exit() {
    let client = connect().await;
    let begin = std::time::Instant::now();
    let mut stream = request(&client, exec(&["sh", "-c", "sleep 2 & echo $!"])).await;
    started(&mut stream).await;
    let (out, _, exit) = collect(&mut stream).await;
    assert_eq!(exit.code, 0);
    assert!(
        begin.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        begin.elapsed()
    );
    // The orphan is reaped once it exits, not left a zombie.
    wait_until_gone(out.trim().parse().unwrap()).await;
}

#[tokio::test]
async fn connect_splices_a_guest_port_onto_the_stream_until_both_sides_close() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        sock.read_to_end(&mut got).await.unwrap();
        got.reverse();
        sock.write_all(&got).await.unwrap();
    });
    let client = connect().await;
    let mut stream = request(&client, Request::Connect { port }).await;
    assert_eq!(next(&mut stream).await.kind, FrameKind::Response);
    // The host's yamux half-close reaches the guest program as end of file,
    // and its answer still comes back.
    stream.write_all(b"stressed").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, "desserts");
}

#[tokio::test]
async fn connect_to_a_closed_port_gets_connect_failed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let client = connect().await;
    let mut stream = request(&client, Request::Connect { port }).await;
    let frame = next(&mut stream).await;
    assert_eq!(frame.kind, FrameKind::Error);
    assert_eq!(frame.parse::<ErrorBody>().unwrap().code, "connect_failed");
}

#[tokio::test]
async fn unpack_and_pack_requests_are_routed_to_the_files_module() {
    let tmp = tempfile::tempdir().unwrap();
    let mut enc = banger_proto::archive::Encoder::new(Vec::new());
    enc.file(b"", 0o644, 0, 5).unwrap();
    enc.data(b"hello").unwrap();
    let archive = enc.end().unwrap();
    let dest = tmp.path().join("greeting").display().to_string();
    let client = connect().await;

    let unpack = banger_proto::UnpackRequest { dest: dest.clone() };
    let mut stream = request(&client, Request::Unpack(unpack)).await;
    send(&mut stream, Frame::new(FrameKind::Stdin, archive.clone())).await;
    send(&mut stream, Frame::new(FrameKind::StdinEof, Vec::new())).await;
    let frame = next(&mut stream).await;
    assert_eq!(frame.kind, FrameKind::Response);
    assert_eq!(
        frame.parse::<banger_proto::ArchiveStats>().unwrap().files,
        1
    );

    let mut stream = request(
        &client,
        Request::Pack(banger_proto::PackRequest { path: dest }),
    )
    .await;
    let frame = next(&mut stream).await;
    assert_eq!((frame.kind, frame.payload), (FrameKind::Stdout, archive));
    assert_eq!(next(&mut stream).await.kind, FrameKind::Response);
}
