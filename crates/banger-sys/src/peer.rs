//! Who is on the other end of a unix socket (`SO_PEERCRED`): the daemon
//! admits or refuses each API connection by its peer's uid. The policy is
//! the daemon's; this module only reads the kernel's answer.

use std::io;
use std::os::fd::AsFd;

/// The credentials the kernel recorded for a socket's peer when it
/// connected; they cannot be forged by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The peer of a connected unix stream socket.
pub fn peer_cred(socket: impl AsFd) -> io::Result<PeerCred> {
    let cred = rustix::net::sockopt::get_socket_peercred(socket)?;
    Ok(PeerCred {
        pid: cred.pid.as_raw_nonzero().get() as u32,
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peer_of_our_own_connection_is_us() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let cred = super::peer_cred(&a).unwrap();
        assert_eq!(cred.uid, crate::process::euid());
        assert_eq!(cred.pid, std::process::id());
    }
}
