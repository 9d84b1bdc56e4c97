//! Passing an open file to another process over a unix socket
//! (`SCM_RIGHTS`): QEMU's `getfd` takes the file a migration is written to
//! or read from this way, so the daemon opens it (and checks where it is)
//! rather than handing QEMU a path.

use std::io::{self, IoSlice};
use std::os::fd::AsFd;

/// Sends `bytes` with `fd` attached in one `sendmsg`. The socket may be
/// non-blocking: `WouldBlock` comes back as an error for the caller to wait
/// on. Returns how many of `bytes` were sent.
pub fn send_with_fd(socket: impl AsFd, bytes: &[u8], fd: impl AsFd) -> io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let fds = [fd.as_fd()];
    let mut space = [0; rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the file descriptor"));
    }
    Ok(sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_peer_receives_a_working_copy_of_the_file() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"state").unwrap();
        assert_eq!(send_with_fd(&a, b"getfd", &file).unwrap(), 5);
        let mut space = [0; rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let mut buf = [0u8; 16];
        let got = rustix::net::recvmsg(
            &b,
            &mut [io::IoSliceMut::new(&mut buf)],
            &mut control,
            rustix::net::RecvFlags::empty(),
        )
        .unwrap();
        assert_eq!(&buf[..got.bytes], b"getfd");
        let fd = control
            .drain()
            .find_map(|m| match m {
                rustix::net::RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
                _ => None,
            })
            .unwrap();
        let mut received = std::fs::File::from(fd);
        received.rewind().unwrap();
        let mut text = String::new();
        received.read_to_string(&mut text).unwrap();
        assert_eq!(text, "state");
    }
}
