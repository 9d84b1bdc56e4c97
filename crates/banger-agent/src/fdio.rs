//! Async reads and writes on a raw file descriptor that tokio has no type
//! for: the virtio-serial port and a pseudo-terminal's master end. Owns the
//! non-blocking I/O loop and the quirks of those devices; owns nothing about
//! what flows over them.
//!
//! - A pty master reads `EIO` once the slave has no holders left: end of
//!   stream.
//! - Both devices can report a hang-up (`EPOLLHUP`) and later work again (a
//!   host reconnects to the port; a process reopens the slave). tokio keeps
//!   a registration's "closed" readiness forever, so after a hang-up every
//!   `EAGAIN` would be retried at once, spinning. Here `EAGAIN` after a
//!   hang-up is end of stream (reads) or a broken pipe (writes); whoever
//!   wants to go on makes a new [`FdStream`], that is a new registration.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest single `write()`; the virtio-serial port takes at most this much
/// at a time.
pub const MAX_WRITE: usize = 32 * 1024;

/// A shared, non-blocking file descriptor usable as `AsyncRead + AsyncWrite`.
/// Clones share the descriptor, so one task can read while another writes.
#[derive(Clone, Debug)]
pub struct FdStream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fd: AsyncFd<OwnedFd>,
    eio_is_eof: bool,
}

impl FdStream {
    /// Wraps `fd` (switching it to non-blocking mode). Must be called inside
    /// a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        Self::build(fd, false)
    }

    /// Wraps a pseudo-terminal master, on which `EIO` means the terminal hung up.
    pub fn pty_master(fd: OwnedFd) -> io::Result<Self> {
        Self::build(fd, true)
    }

    fn build(fd: OwnedFd, eio_is_eof: bool) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        // Deprecated for arbitrary `T: AsRawFd`, whose fd may change or be
        // closed behind tokio's back; an `OwnedFd` we own and never swap
        // upholds the contract of `AsyncFd::register`.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(FdStream {
            inner: Arc::new(Inner { fd, eio_is_eof }),
        })
    }

    fn poll_read_into(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.inner.fd.poll_read_ready(cx))?;
            let hung_up = guard.ready().is_read_closed();
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| rustix::io::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e))
                    if self.inner.eio_is_eof
                        && e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) =>
                {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) if hung_up => return Poll::Ready(Ok(())),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_write_from(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let buf = &buf[..buf.len().min(MAX_WRITE)];
        loop {
            let mut guard = ready!(self.inner.fd.poll_write_ready(cx))?;
            let hung_up = guard.ready().is_write_closed();
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) if hung_up => {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// Whether `fd` polls hung up right now (for the port: no host on the other
/// side), asked of the device, not of a registration.
pub fn hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, poll};
    let mut fds = [PollFd::new(&fd, PollFlags::empty())];
    poll(&mut fds, 0)?;
    Ok(fds[0].revents().contains(PollFlags::HUP))
}

impl AsFd for FdStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.get_ref().as_fd()
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_into(cx, buf)
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_from(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn large_writes_arrive_whole_through_a_socketpair() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut a = FdStream::new(a.into()).unwrap();
        let mut b = FdStream::new(b.into()).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&data).await.unwrap();
        });
        let mut got = vec![0u8; expected.len()];
        b.read_exact(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, expected);
    }

    /// Asked of the device, a hang-up is over once the other side is back,
    /// whatever a registration made meanwhile keeps.
    #[test]
    fn hung_up_says_what_the_device_says_now() {
        let pty = banger_sys::pty::open(None).unwrap();
        let name = rustix::pty::ptsname(&pty.master, Vec::new()).unwrap();
        assert!(!hung_up(pty.master.as_fd()).unwrap(), "slave open");
        drop(pty.slave);
        assert!(hung_up(pty.master.as_fd()).unwrap(), "slave closed");
        let _again = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().unwrap())
            .unwrap();
        assert!(!hung_up(pty.master.as_fd()).unwrap(), "slave reopened");
    }

    /// A pty whose slave is closed and reopened behaves like the port when a
    /// host disconnects and another connects: hang-up, then `EAGAIN`.
    #[test]
    fn eagain_after_a_hang_up_ends_the_stream_instead_of_spinning() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let result = rt.block_on(async {
                let pty = banger_sys::pty::open(None).unwrap();
                let name = rustix::pty::ptsname(&pty.master, Vec::new()).unwrap();
                let mut master = FdStream::new(pty.master).unwrap();
                drop(pty.slave);
                // Let the reactor see the hang-up before the slave comes back.
                let _ = tokio::time::timeout(Duration::from_millis(50), master.inner.fd.readable())
                    .await;
                let _again = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(name.to_str().unwrap())
                    .unwrap();
                let mut buf = [0u8; 16];
                master.read(&mut buf).await
            });
            let _ = done_tx.send(result.map_err(|e| e.to_string()));
        });
        let result = done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the read returned instead of spinning");
        assert_eq!(result, Ok(0));
    }

    #[tokio::test]
    async fn pty_master_reads_end_of_stream_after_hang_up() {
        let pty = banger_sys::pty::open(None).unwrap();
        let mut master = FdStream::pty_master(pty.master).unwrap();
        rustix::io::write(&pty.slave, b"bye").unwrap();
        drop(pty.slave);
        let mut out = Vec::new();
        master.read_to_end(&mut out).await.unwrap();
        assert!(String::from_utf8_lossy(&out).contains("bye"));
    }
}
