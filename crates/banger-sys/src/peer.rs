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

/// The gid of the group named `name` in `/etc/group`, if there is one.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    Ok(parse_group(&std::fs::read_to_string("/etc/group")?, name))
}

fn parse_group(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Whether the peer is in group `gid`: its primary group, or one of the
/// supplementary groups its process carries (`/proc/<pid>/status`).
pub fn peer_in_group(peer: &PeerCred, gid: u32) -> bool {
    if peer.gid == gid {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{}/status", peer.pid))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_are_found_by_name_and_membership_by_the_process() {
        let text = "root:x:0:\nkvm:x:108:ana\nbanger:x:998:ana,bo\n";
        assert_eq!(super::parse_group(text, "banger"), Some(998));
        assert_eq!(super::parse_group(text, "bang"), None);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = super::peer_cred(&a).unwrap();
        assert!(super::peer_in_group(&me, me.gid));
        assert!(!super::peer_in_group(&me, 4_000_000));
    }

    #[test]
    fn the_peer_of_our_own_connection_is_us() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let cred = super::peer_cred(&a).unwrap();
        assert_eq!(cred.uid, crate::process::euid());
        assert_eq!(cred.pid, std::process::id());
    }
}
