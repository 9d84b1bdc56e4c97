//! A bare host-side client for trying the agent in a real guest by hand:
//! connects to the agent channel's unix socket (QEMU's chardev), runs the
//! handshake and one request, and prints what comes back.
//!
//! `cargo run --example agent-probe -- SOCKET health | exec ARGV... | tty ARGV... | shutdown | reboot`

use std::future::Future;
use std::task::Poll;

use banger_proto::{Envelope, ExecRequest, Frame, FrameKind, PROTOCOL_VERSION, Request, Resize};
use futures::future::poll_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, what) = args
        .split_first()
        .expect("usage: agent-probe SOCKET health|exec ARGV...|tty ARGV...|shutdown|reboot");
    let mut io = tokio::net::UnixStream::connect(socket).await?;
    let nonce = format!("{:x}", std::process::id());
    io.write_all(banger_proto::sync_line(&nonce).as_bytes())
        .await?;
    let mut line = Vec::new();
    loop {
        let b = io.read_u8().await?;
        if b != b'\n' {
            line.push(b);
            continue;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        line.clear();
        if let Some(at) = text.find("BANGER-READY ")
            && banger_proto::parse_ready(&text[at..]) == Some((nonce.as_str(), PROTOCOL_VERSION))
        {
            break;
        }
    }
    let mut conn =
        yamux::Connection::new(io.compat(), yamux::Config::default(), yamux::Mode::Client);
    let stream = poll_fn(|cx| conn.poll_new_outbound(cx))
        .await
        .map_err(std::io::Error::other)?;
    let (done_tx, mut done_rx) = oneshot::channel::<()>();
    let driver = tokio::spawn(async move {
        poll_fn(|cx| {
            if std::pin::Pin::new(&mut done_rx).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            loop {
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    });
    let mut stream = stream.compat();
    let request = match what.first().map(String::as_str) {
        Some("health") => Request::Health,
        Some("shutdown") => Request::Shutdown { reboot: false },
        Some("reboot") => Request::Shutdown { reboot: true },
        Some(mode @ ("exec" | "tty")) => Request::Exec(ExecRequest {
            argv: what[1..].to_vec(),
            tty: mode == "tty",
            size: Some(Resize { rows: 24, cols: 80 }),
            ..Default::default()
        }),
        _ => panic!("unknown request {what:?}"),
    };
    banger_proto::write_frame(
        &mut stream,
        &Frame::json(FrameKind::Request, &Envelope::new(request)),
    )
    .await?;
    let mut code = 0;
    while let Some(frame) = banger_proto::read_frame(&mut stream).await? {
        match frame.kind {
            FrameKind::Stdout => print!("{}", String::from_utf8_lossy(&frame.payload)),
            FrameKind::Stderr => eprint!("{}", String::from_utf8_lossy(&frame.payload)),
            FrameKind::Exit => {
                let exit: banger_proto::ExitStatus = frame.parse()?;
                println!("[exit {exit:?}]");
                code = exit.code;
            }
            kind => println!("[{kind:?}] {}", String::from_utf8_lossy(&frame.payload)),
        }
    }
    let _ = done_tx.send(());
    let _ = driver.await;
    std::process::exit(code)
}
