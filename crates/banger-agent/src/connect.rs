//! The `connect` request on one stream: a TCP connection to a port on the
//! guest's loopback, spliced onto the stream (how `vm ssh` reaches sshd in
//! every network mode). Owns that splice; routing the request here is
//! `channel.rs`'s.
//!
//! How a stream runs after the request frame:
//!
//! 1. Connect to `127.0.0.1:port`, for at most [`CONNECT_TIMEOUT`]; for
//!    sshd's port in a guest that has sshd, retry a refused connection
//!    every [`LISTEN_POLL`] for at most [`SSHD_START`] (the agent starts
//!    sshd once the host asks for it: the host's probe is answered the
//!    moment sshd listens, not at its next back-off step). Failure → one
//!    `Error` frame with code `connect_failed`, then the stream is closed.
//! 2. One `Response` frame, `{}`. From here on the stream carries the
//!    connection's raw bytes, no more frames.
//! 3. Copy both ways at once. When one side ends its sending (the host
//!    closes its half of the stream, or the guest program shuts down its
//!    write side), shut down the other side's write half and keep copying
//!    the other way until that ends too: protocols that half-close (ssh
//!    sending EOF, `nc -N`) see what they expect.
//! 4. An error either way (a reset, the host connection gone) ends both
//!    directions; dropping the socket closes the connection.

use std::time::Duration;

use banger_proto::{Frame, FrameKind};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the guest side may take to accept; loopback answers at once
/// unless the listener's backlog is full.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// sshd's port.
pub const SSH_PORT: u16 = 22;
/// How long a connection to [`SSH_PORT`] waits for sshd to listen.
pub const SSHD_START: Duration = Duration::from_secs(10);
/// How often it tries meanwhile (a refused loopback connection costs next
/// to nothing; a probe that got through makes sshd fork).
pub const LISTEN_POLL: Duration = Duration::from_millis(20);

/// Runs one connect request; `input` and `output` are the two halves of
/// its stream, positioned after the request frame. With `wait`, a refused
/// connection is tried again for that long.
pub async fn run<R, W>(port: u16, wait: Option<Duration>, mut input: R, mut output: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
    let connected = loop {
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", port)))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        match connected {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && tokio::time::Instant::now() + LISTEN_POLL < deadline =>
            {
                tokio::time::sleep(LISTEN_POLL).await;
            }
            other => break other,
        }
    };
    let tcp = match connected {
        Ok(tcp) => tcp,
        Err(e) => {
            let msg = format!("cannot connect to 127.0.0.1:{port} in the guest: {e}");
            let _ = crate::channel::write_error(&mut output, "connect_failed", msg).await;
            let _ = output.shutdown().await;
            return;
        }
    };
    // Interactive sessions (ssh) send many small writes.
    let _ = tcp.set_nodelay(true);
    let ok = Frame::json(FrameKind::Response, &serde_json::json!({}));
    if banger_proto::write_frame(&mut output, &ok).await.is_err() {
        return;
    }
    let (mut tcp_in, mut tcp_out) = tcp.into_split();
    let to_guest = async {
        tokio::io::copy(&mut input, &mut tcp_out).await?;
        tcp_out.shutdown().await
    };
    let to_host = async {
        tokio::io::copy(&mut tcp_in, &mut output).await?;
        output.shutdown().await
    };
    let _ = tokio::try_join!(to_guest, to_host);
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::ErrorBody;
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio::net::TcpListener;

    /// Starts a connect request for `port` and returns the host's end of
    /// its stream.
    fn request(port: u16) -> DuplexStream {
        request_waiting(port, None)
    }

    /// [`request`], waiting up to `wait` for a listener.
    fn request_waiting(port: u16, wait: Option<Duration>) -> DuplexStream {
        let (host, guest) = tokio::io::duplex(64 * 1024);
        let (input, output) = tokio::io::split(guest);
        tokio::spawn(run(port, wait, input, output));
        host
    }

    async fn listener() -> (TcpListener, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    async fn first_frame(host: &mut DuplexStream) -> Frame {
        banger_proto::read_frame(host).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn bytes_go_through_both_ways() {
        let (listener, port) = listener().await;
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            loop {
                let n = sock.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                sock.write_all(&buf[..n]).await.unwrap();
            }
        });
        let mut host = request(port);
        assert_eq!(first_frame(&mut host).await.kind, FrameKind::Response);
        host.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        host.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
    }

    #[tokio::test]
    async fn the_host_closing_its_side_still_gets_the_answer() {
        let (listener, port) = listener().await;
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            sock.read_to_end(&mut got).await.unwrap();
            sock.write_all(format!("got {} bytes", got.len()).as_bytes())
                .await
                .unwrap();
        });
        let mut host = request(port);
        assert_eq!(first_frame(&mut host).await.kind, FrameKind::Response);
        host.write_all(b"hello").await.unwrap();
        host.shutdown().await.unwrap();
        let mut answer = String::new();
        host.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "got 5 bytes");
    }

    #[tokio::test]
    async fn the_guest_closing_its_side_still_gets_the_hosts_bytes() {
        let (listener, port) = listener().await;
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            sock.write_all(b"banner").await.unwrap();
            sock.shutdown().await.unwrap();
            let mut got = String::new();
            sock.read_to_string(&mut got).await.unwrap();
            got
        });
        let mut host = request(port);
        assert_eq!(first_frame(&mut host).await.kind, FrameKind::Response);
        let mut banner = String::new();
        host.read_to_string(&mut banner).await.unwrap();
        assert_eq!(banner, "banner");
        host.write_all(b"late").await.unwrap();
        host.shutdown().await.unwrap();
        assert_eq!(server.await.unwrap(), "late");
    }

    #[tokio::test]
    async fn a_waiting_connection_gets_through_once_the_port_listens() {
        let (listener, port) = listener().await;
        drop(listener);
        let started = std::time::Instant::now();
        let mut host = request_waiting(port, Some(Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            sock.write_all(b"SSH-2.0-late\r\n").await.unwrap();
        });
        assert_eq!(first_frame(&mut host).await.kind, FrameKind::Response);
        let mut banner = [0u8; 4];
        host.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"SSH-");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_waiting_connection_gives_up_after_its_wait() {
        let (listener, port) = listener().await;
        drop(listener);
        let started = std::time::Instant::now();
        let mut host = request_waiting(port, Some(Duration::from_millis(300)));
        let frame = first_frame(&mut host).await;
        assert_eq!(frame.kind, FrameKind::Error);
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_closed_port_gets_connect_failed() {
        let (listener, port) = listener().await;
        drop(listener);
        let mut host = request(port);
        let frame = first_frame(&mut host).await;
        assert_eq!(frame.kind, FrameKind::Error);
        let body: ErrorBody = frame.parse().unwrap();
        assert_eq!(body.code, "connect_failed");
        assert!(body.message.contains(&format!("127.0.0.1:{port}")));
        assert_eq!(banger_proto::read_frame(&mut host).await.unwrap(), None);
    }
}
