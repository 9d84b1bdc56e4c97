//! Who may use the API. The socket is mode 0600 in a 0700 directory, but
//! file modes do not stop root, and a socket inherited or reached another
//! way would bypass them; so every accepted connection's peer uid
//! (`SO_PEERCRED`) is checked before a byte of it is read:
//!
//! - a daemon run by a user admits that user only;
//! - a root daemon admits root, and the members of the one group named by
//!   `api_group` in the config (none by default): its API starts VMs, makes
//!   taps and writes files as root, so using it is being root, and that
//!   group is the list of who may.
//!
//! A refused connection is closed unanswered, with a warning in the log.

use axum::serve::Listener;
use tokio::net::{UnixListener, UnixStream, unix::SocketAddr};

/// Who the API admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPolicy {
    uid: u32,
    /// A root daemon's `api_group`.
    group: Option<u32>,
}

impl PeerPolicy {
    /// The policy of a daemon running with effective uid `euid`.
    pub fn for_daemon(euid: u32) -> PeerPolicy {
        PeerPolicy {
            uid: euid,
            group: None,
        }
    }

    /// A root daemon that also admits the members of group `gid`.
    pub fn with_group(self, gid: Option<u32>) -> PeerPolicy {
        PeerPolicy {
            group: gid.filter(|_| self.uid == 0),
            ..self
        }
    }

    pub fn admits(&self, uid: u32) -> bool {
        uid == self.uid
    }

    fn admits_peer(&self, peer: &banger_sys::peer::PeerCred) -> bool {
        self.admits(peer.uid)
            || self
                .group
                .is_some_and(|gid| banger_sys::peer::peer_in_group(peer, gid))
    }
}

/// The process on the other end of an API connection, as the kernel
/// reported it when the connection was accepted (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, CheckedListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, CheckedListener>) -> Peer {
        *stream.remote_addr()
    }
}

/// A unix listener that hands axum only the connections [`PeerPolicy`]
/// admits, each with its [`Peer`].
pub struct CheckedListener {
    inner: UnixListener,
    policy: PeerPolicy,
}

impl CheckedListener {
    pub fn new(inner: UnixListener, policy: PeerPolicy) -> CheckedListener {
        CheckedListener { inner, policy }
    }
}

impl Listener for CheckedListener {
    type Io = UnixStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (UnixStream, Peer) {
        loop {
            let (stream, _): (UnixStream, SocketAddr) = Listener::accept(&mut self.inner).await;
            match banger_sys::peer::peer_cred(&stream) {
                Ok(peer) if self.policy.admits_peer(&peer) => {
                    return (stream, Peer { pid: peer.pid });
                }
                Ok(peer) => tracing::warn!(
                    uid = peer.uid,
                    pid = peer.pid,
                    "refused an API connection from another user"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "refused an API connection whose peer cannot be identified"
                ),
            }
        }
    }

    /// This end: the daemon itself.
    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            pid: std::process::id(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_root_daemon_admits_its_group_and_a_user_daemon_ignores_one() {
        let peer = |uid, gid| banger_sys::peer::PeerCred {
            pid: std::process::id(),
            uid,
            gid,
        };
        let root = PeerPolicy::for_daemon(0).with_group(Some(4242));
        assert!(root.admits_peer(&peer(0, 0)));
        assert!(
            root.admits_peer(&peer(1000, 4242)),
            "a member (primary group)"
        );
        assert!(!root.admits_peer(&peer(1000, 1000)), "not a member");
        let user = PeerPolicy::for_daemon(1000).with_group(Some(4242));
        assert!(
            !user.admits_peer(&peer(1001, 4242)),
            "only a root daemon has a group"
        );
        assert!(user.admits_peer(&peer(1000, 1000)));
    }

    #[test]
    fn a_daemon_admits_its_own_uid_only() {
        let user = PeerPolicy::for_daemon(1000);
        assert!(user.admits(1000));
        assert!(!user.admits(1001));
        assert!(!user.admits(0), "not even root");
        let root = PeerPolicy::for_daemon(0);
        assert!(root.admits(0));
        assert!(!root.admits(1000));
    }

    /// Serves one line back to each admitted connection.
    async fn echo_server(policy: PeerPolicy) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bangerd.sock");
        let mut listener = CheckedListener::new(UnixListener::bind(&socket).unwrap(), policy);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await;
                let _ = stream.write_all(b"hello\n").await;
            }
        });
        (dir, socket)
    }

    #[tokio::test]
    async fn an_admitted_peer_is_served() {
        let (_dir, socket) = echo_server(PeerPolicy::for_daemon(banger_sys::process::euid())).await;
        let mut client = UnixStream::connect(&socket).await.unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello\n");
    }

    #[tokio::test]
    async fn a_peer_of_another_uid_is_closed_unanswered() {
        let other = banger_sys::process::euid().wrapping_add(1);
        let (_dir, socket) = echo_server(PeerPolicy::for_daemon(other)).await;
        let mut client = UnixStream::connect(&socket).await.unwrap();
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        assert!(got.is_empty(), "{got:?}");
    }
}
