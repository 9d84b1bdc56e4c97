//! Host⇄guest wire protocol between the daemon (or CLI, through the daemon)
//! and `banger-agent`, the guest's PID 1. Owns the message types, the frame
//! codec and the channel handshake; owns no transport.
//!
//! How a connection runs:
//!
//! 1. The host opens the engine's agent channel (a virtio-serial port on
//!    QEMU, named [`PORT_NAME`] in the guest) and writes
//!    `BANGER-SYNC <nonce>\n` ([`sync_line`]).
//! 2. The agent discards bytes until it reads a full sync line (bytes left
//!    over from an earlier host connection are thus skipped), then answers
//!    `BANGER-READY <nonce> <protocol>\n` ([`ready_line`]). The host likewise
//!    discards until it reads the ready line with its own nonce.
//! 3. Both sides then run a yamux session over the channel: the host is the
//!    client, the agent the server. Every request is its own yamux stream.
//! 4. On each stream the host writes one [`FrameKind::Request`] frame holding
//!    an [`Envelope`]. An envelope whose `version` the agent does not speak
//!    gets a [`FrameKind::Error`] frame with code `protocol_mismatch`.
//! 5. `health`/`shutdown`: the agent answers one [`FrameKind::Response`] frame
//!    and closes the stream.
//! 6. `exec`: the agent answers [`FrameKind::Started`] (or `Error`), then
//!    streams `Stdout`/`Stderr` frames and finally one `Exit` frame. The host
//!    may send `Stdin`, `StdinEof`, `Signal` and `Resize` frames at any time.
//!    If the stream closes before `Exit`, the agent kills the process group.
//! 7. `session`: processes the agent keeps independent of any stream or
//!    connection; see [`session`] for each action's stream.
//! 8. `unpack`: the host sends the [`archive`] as `Stdin` frames, then
//!    `StdinEof`. The agent unpacks beside `dest` and swaps it in, then
//!    answers one `Response` frame ([`ArchiveStats`]), or one `Error` frame
//!    as soon as something fails, leaving the previous `dest` untouched.
//! 9. `pack`: the agent sends the archive of `path` as `Stdout` frames,
//!    then one `Response` frame ([`ArchiveStats`]), or an `Error` frame
//!    (after which the host discards what it received).
//! 10. `identity`: after a restore, the host gives the guest the identity
//!     of the VM it now is ([`IdentityRequest`]); the agent applies it and
//!     answers one `Response` frame ([`IdentityReport`]) or one `Error`.
//!
//! A frame is `kind: u8`, `len: u32` big-endian, then `len` payload bytes
//! (at most [`MAX_FRAME`]). Data frames carry raw bytes, the rest JSON.

use serde::{Deserialize, Serialize};

pub mod archive;
pub mod chunks;
pub mod modules;
pub mod session;
pub use archive::ArchiveStats;
pub use session::{SessionInfo, SessionRequest, SessionState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Name of the virtio-serial port the agent listens on.
pub const PORT_NAME: &str = "org.banger.agent";
/// Serial number of the per-VM config drive (`/sys/block/vdX/serial`).
pub const CONFIG_DRIVE_SERIAL: &str = "banger-config";
/// Serial number of the root disk.
pub const ROOT_DRIVE_SERIAL: &str = "banger-root";
/// Serial number of the work disk mounted at `/root`.
pub const WORK_DRIVE_SERIAL: &str = "banger-work";
/// Largest payload of a single frame.
pub const MAX_FRAME: usize = 1 << 20;
/// Size of the config drive; the JSON [`GuestConfig`] is NUL-padded to it.
pub const CONFIG_DRIVE_SIZE: usize = 64 * 1024;

/// What a sync line starts with.
pub const SYNC_PREFIX: &str = "BANGER-SYNC ";

/// Line the host writes to start a session.
pub fn sync_line(nonce: &str) -> String {
    format!("{SYNC_PREFIX}{nonce}\n")
}

/// Line the agent answers with once it has seen a sync line.
pub fn ready_line(nonce: &str, protocol: u32) -> String {
    format!("BANGER-READY {nonce} {protocol}\n")
}

/// Parses `BANGER-SYNC <nonce>` (without the newline).
pub fn parse_sync(line: &str) -> Option<&str> {
    line.strip_prefix(SYNC_PREFIX)
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// Parses `BANGER-READY <nonce> <protocol>` (without the newline).
pub fn parse_ready(line: &str) -> Option<(&str, u32)> {
    let mut it = line.strip_prefix("BANGER-READY ")?.split_whitespace();
    let nonce = it.next()?;
    let proto = it.next()?.parse().ok()?;
    Some((nonce, proto))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// host → agent, JSON [`Envelope`]
    Request = 1,
    /// agent → host, JSON, the answer to a non-streaming request
    Response = 2,
    /// agent → host, JSON [`ErrorBody`]
    Error = 3,
    /// agent → host, JSON [`Started`]
    Started = 4,
    /// host → agent, raw bytes
    Stdin = 5,
    /// host → agent, empty: close the process's stdin
    StdinEof = 6,
    /// host → agent, JSON [`SignalMsg`]
    Signal = 7,
    /// host → agent, JSON [`Resize`]
    Resize = 8,
    /// agent → host, raw bytes
    Stdout = 9,
    /// agent → host, raw bytes
    Stderr = 10,
    /// agent → host, JSON [`ExitStatus`]
    Exit = 11,
}

impl FrameKind {
    pub fn from_u8(b: u8) -> Option<Self> {
        use FrameKind::*;
        Some(match b {
            1 => Request,
            2 => Response,
            3 => Error,
            4 => Started,
            5 => Stdin,
            6 => StdinEof,
            7 => Signal,
            8 => Resize,
            9 => Stdout,
            10 => Stderr,
            11 => Exit,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: FrameKind, payload: impl Into<Vec<u8>>) -> Self {
        Frame {
            kind,
            payload: payload.into(),
        }
    }

    pub fn json<T: Serialize>(kind: FrameKind, value: &T) -> Self {
        Frame::new(
            kind,
            serde_json::to_vec(value).expect("wire types serialize"),
        )
    }

    pub fn parse<T: for<'de> Deserialize<'de>>(&self) -> std::io::Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad {:?} frame: {e}", self.kind),
            )
        })
    }

    /// Encodes header and payload into one buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.payload.len());
        out.push(self.kind as u8);
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a header.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut hdr = [0u8; 5];
    let mut got = 0;
    while got < hdr.len() {
        let n = r.read(&mut hdr[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let kind = FrameKind::from_u8(hdr[0]).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unknown frame kind {}", hdr[0]),
        )
    })?;
    let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is too large"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame { kind, payload }))
}

/// Writes one frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&frame.encode()).await?;
    w.flush().await
}

/// The first frame of every stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

impl Envelope {
    pub fn new(request: Request) -> Self {
        Envelope {
            version: PROTOCOL_VERSION,
            request,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Health,
    Exec(ExecRequest),
    /// Sync filesystems and power the guest off (or reboot).
    Shutdown {
        reboot: bool,
    },
    /// Open a TCP connection to `127.0.0.1:port` inside the guest. The agent
    /// answers one `Response` frame (`{}`) or an `Error` frame, then the
    /// stream carries the connection's raw bytes both ways (no more frames)
    /// until either side closes. This is how `vm ssh` reaches sshd in every
    /// network mode, routable address or not.
    Connect {
        port: u16,
    },
    /// A guest session: start, list, attach, logs, stop (see [`session`]).
    Session(SessionRequest),
    /// Replace `dest` with the archive that follows (step 8 above).
    Unpack(UnpackRequest),
    /// Archive `path` onto the stream (step 9 above).
    Pack(PackRequest),
    /// Become the VM named here (step 10 above).
    Identity(IdentityRequest),
}

/// Most entropy bytes one identity request may carry.
pub const MAX_IDENTITY_ENTROPY: usize = 512;

/// What makes a restored guest a machine of its own: sent by the host right
/// after a restore or fork, whose guest still has the snapshot's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IdentityRequest {
    pub vm_name: String,
    pub hostname: String,
    /// The NIC's new MAC and addresses, as at boot; `None`: no network.
    #[serde(default)]
    pub network: Option<GuestNetwork>,
    /// Random bytes from the host, mixed into the guest's RNG (at most
    /// [`MAX_IDENTITY_ENTROPY`]) before it is reseeded.
    pub entropy: Vec<u8>,
    /// The host's wall clock when it sent this; the guest steps to it.
    pub time: WallTime,
    /// sshd's new Ed25519 host key, made on the host (where it takes
    /// milliseconds, against half a second in a TCG guest) so the host
    /// knows the key to pin; installed only if the image has sshd.
    #[serde(default)]
    pub ssh_host_key: Option<SshHostKey>,
    /// The host user's git identity now, as at boot ([`GuestConfig::git_identity`]).
    #[serde(default)]
    pub git_identity: Vec<String>,
}

/// Most bytes of either half of an [`SshHostKey`].
pub const MAX_HOST_KEY: usize = 4096;

/// An OpenSSH key pair as `ssh-keygen` writes it.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SshHostKey {
    /// The private key file (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub private: String,
    /// The public key line (`ssh-ed25519 AAAA...`).
    pub public: String,
}

impl SshHostKey {
    /// Whether it looks like what `ssh-keygen -t ed25519` writes: an
    /// OpenSSH private key file and one `ssh-ed25519` line, each at most
    /// [`MAX_HOST_KEY`] bytes.
    pub fn is_ed25519_pair(&self) -> bool {
        let public = self.public.trim();
        self.private.len() <= MAX_HOST_KEY
            && public.len() <= MAX_HOST_KEY
            && self
                .private
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
            && public.starts_with("ssh-ed25519 ")
            && !public.contains(['\n', '\r'])
    }
}

impl std::fmt::Debug for SshHostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshHostKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WallTime {
    pub secs: i64,
    pub nanos: u32,
}

/// What the agent did with an [`IdentityRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IdentityReport {
    /// How far the guest's clock was stepped (positive: forward).
    pub clock_step_ms: i64,
    /// Whether sshd now serves the request's host key.
    #[serde(default)]
    pub ssh_host_key: bool,
    /// What could not be done but leaves the guest usable (an sshd key
    /// that could not be made), one line each.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// `{"op":"unpack","dest":"/root/repo"}`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UnpackRequest {
    /// Absolute guest path without `..`; its parent must exist. Whatever is
    /// there (file, directory, symlink) is replaced as a whole.
    pub dest: String,
}

/// `{"op":"pack","path":"/etc/hosts"}`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackRequest {
    /// Absolute guest path without `..`; a symlink is sent as a symlink.
    pub path: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Extra environment on top of the agent's defaults (PATH, HOME, TERM).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; `/root` when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run under a pseudo-terminal (stdout carries everything, no stderr).
    #[serde(default)]
    pub tty: bool,
    /// Initial terminal size when `tty`.
    #[serde(default)]
    pub size: Option<Resize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthResponse {
    pub agent_version: String,
    pub protocol: u32,
    pub hostname: String,
    /// Milliseconds since the guest kernel booted.
    pub uptime_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Started {
    pub pid: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignalMsg {
    pub signal: i32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, or 128 + signal when killed by one (as a shell reports it).
    pub code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable machine code: `protocol_mismatch`, `not_found`, `spawn_failed`, `bad_request`,
    /// for sessions `preflight_failed`, `conflict`, for identity `identity_failed`.
    pub code: String,
    pub message: String,
}

/// Per-VM configuration the agent reads from the config drive at boot:
/// JSON, NUL-padded to [`CONFIG_DRIVE_SIZE`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GuestConfig {
    pub version: u32,
    pub vm_name: String,
    pub hostname: String,
    /// Extra lines for `/root/.ssh/authorized_keys`.
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// The guest's network, configured by the agent over netlink; `None`
    /// means no network device (agent channel only).
    #[serde(default)]
    pub network: Option<GuestNetwork>,
    /// The host user's global git identity, `user.name VALUE user.email
    /// VALUE` (the keys the host sets), for root's git config in a guest
    /// that has git.
    #[serde(default)]
    pub git_identity: Vec<String>,
    /// sshd's Ed25519 host key for a guest that has none yet (its first
    /// boot), made on the host: milliseconds there, against ~0.6 s of a
    /// TCG guest's one CPU. `None` on later boots and for images without
    /// sshd; a guest that already has a key keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<SshHostKey>,
}

/// The git config file setting `args` (`user.name VALUE …`, as in
/// [`GuestConfig::git_identity`]), each value quoted and escaped as git
/// reads it back.
pub fn gitconfig(args: &[String]) -> String {
    let mut text = String::from("[user]\n");
    for pair in args.chunks(2) {
        let [key, value] = pair else { continue };
        let name = key.strip_prefix("user.").unwrap_or(key);
        let mut quoted = String::new();
        for c in value.chars() {
            match c {
                '\\' => quoted.push_str("\\\\"),
                '"' => quoted.push_str("\\\""),
                '\n' => quoted.push_str("\\n"),
                '\t' => quoted.push_str("\\t"),
                c if c.is_control() => {}
                c => quoted.push(c),
            }
        }
        text.push_str(&format!("\t{name} = \"{quoted}\"\n"));
    }
    text
}

/// Static network configuration for the guest's one NIC (the agent
/// configures it itself: Debian's cloud kernel ignores `ip=`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GuestNetwork {
    /// MAC address of the NIC to configure (`52:54:00:..`), to find it among links.
    pub mac: String,
    /// Address with prefix length, e.g. `172.30.0.5/24`.
    pub address: String,
    /// Default gateway, e.g. `172.30.0.1`.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Resolvers for `/etc/resolv.conf`.
    #[serde(default)]
    pub dns: Vec<String>,
    /// Search domain for `/etc/resolv.conf` (the DNS suffix, e.g. `banger`).
    #[serde(default)]
    pub search: Option<String>,
}

impl GuestConfig {
    /// Encodes into a config-drive image.
    pub fn to_drive(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = serde_json::to_vec(self)?;
        if buf.len() >= CONFIG_DRIVE_SIZE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "guest config exceeds the config drive",
            ));
        }
        buf.resize(CONFIG_DRIVE_SIZE, 0);
        Ok(buf)
    }

    /// Decodes a config-drive image (JSON up to the first NUL).
    pub fn from_drive(bytes: &[u8]) -> std::io::Result<Self> {
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        serde_json::from_slice(&bytes[..end])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_through_a_byte_stream() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let sent = vec![
            Frame::json(
                FrameKind::Request,
                &Envelope::new(Request::Exec(ExecRequest {
                    argv: vec!["true".into()],
                    ..Default::default()
                })),
            ),
            Frame::new(FrameKind::Stdout, vec![7u8; 300]),
            Frame::new(FrameKind::StdinEof, Vec::new()),
        ];
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for f in &sent {
                    write_frame(&mut a, f).await.unwrap();
                }
            })
        };
        for f in &sent {
            assert_eq!(read_frame(&mut b).await.unwrap().as_ref(), Some(f));
        }
        writer.await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_frame_is_rejected() {
        let mut bytes = vec![FrameKind::Stdout as u8];
        bytes.extend_from_slice(&((MAX_FRAME as u32) + 1).to_be_bytes());
        let err = read_frame(&mut &bytes[..]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn handshake_lines_parse() {
        assert_eq!(parse_sync(sync_line("ab12").trim_end()), Some("ab12"));
        assert_eq!(
            parse_ready(ready_line("ab12", 3).trim_end()),
            Some(("ab12", 3))
        );
        assert_eq!(parse_sync("BANGER-SYNC "), None);
        assert_eq!(parse_ready("BANGER-READY x notanumber"), None);
    }

    #[test]
    fn envelope_json_names_the_op() {
        let json = serde_json::to_string(&Envelope::new(Request::Health)).unwrap();
        assert_eq!(json, r#"{"version":1,"request":{"op":"health"}}"#);
    }

    #[test]
    fn identity_request_names_its_op() {
        let json = serde_json::to_value(Envelope::new(Request::Identity(IdentityRequest {
            vm_name: "a".into(),
            hostname: "a".into(),
            entropy: vec![1, 2],
            time: WallTime { secs: 5, nanos: 6 },
            ..Default::default()
        })))
        .unwrap();
        assert_eq!(json["request"]["op"], "identity");
        assert_eq!(json["request"]["time"]["secs"], 5);
    }

    #[test]
    fn guest_config_survives_the_drive_encoding() {
        let cfg = GuestConfig {
            version: 1,
            vm_name: "web".into(),
            hostname: "web".into(),
            authorized_keys: vec!["ssh-ed25519 AAAA test".into()],
            network: Some(GuestNetwork {
                mac: "52:54:00:12:34:56".into(),
                address: "172.30.0.5/24".into(),
                gateway: Some("172.30.0.1".into()),
                dns: vec!["172.30.0.1".into()],
                search: Some("banger".into()),
            }),
            git_identity: vec!["user.name".into(), "Ann \"A\"\nB".into()],
            ssh_host_key: None,
        };
        let drive = cfg.to_drive().unwrap();
        assert_eq!(drive.len(), CONFIG_DRIVE_SIZE);
        assert_eq!(GuestConfig::from_drive(&drive).unwrap(), cfg);
    }
}
