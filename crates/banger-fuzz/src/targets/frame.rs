//! `frame`: the agent channel's frame codec ([`banger_proto::read_frame`])
//! and the JSON each frame kind carries, the handshake lines and the
//! config drive: everything the agent decodes from the host and the host
//! from a guest before any logic runs.
//!
//! `read_frame` is async; the reader here is always ready (it hands out
//! the input in pieces whose sizes are a function of the input, to reach
//! the header loop's partial reads), so one poll with a no-op waker
//! completes it and no runtime is needed.
//!
//! Invariants: no panic; every frame read is at most `MAX_FRAME` bytes and
//! re-encodes to exactly the bytes it was read from; no read allocates
//! more than `MAX_FRAME` and change; errors are `InvalidData` or
//! `UnexpectedEof`, and a clean end comes only at the end of the input;
//! a payload that parses as its kind's type serializes back to JSON that
//! parses to the same value; a parsed sync or ready line round-trips.

use super::{STRUCTURED, Target, mix, outcome_of};
use crate::rng::Rng;
use banger_proto::session::{SessionInfo, SessionRequest};
use banger_proto::{
    ArchiveStats, Envelope, ErrorBody, ExitStatus, Frame, FrameKind, GuestConfig, HealthResponse,
    IdentityReport, MAX_FRAME, Resize, SignalMsg, Started, parse_ready, parse_sync, read_frame,
    ready_line, sync_line,
};
use banger_sys::alloc::peak_during;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::io::ErrorKind;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

pub const TARGET: Target = Target {
    name: "frame",
    about: "agent frames (read_frame) and their JSON payloads, handshake lines, the config drive",
    run,
    max_len: 8 * 1024,
    dictionary: &[
        b"\x01\x00\x00\x00",
        b"\x00\x10\x00\x00",
        b"\x00\x10\x00\x01",
        b"{\"version\":1,\"request\":{\"op\":\"exec\",\"argv\":[\"true\"]}}",
        b"{\"op\":\"session\"",
        b"{\"op\":\"unpack\",\"dest\":\"/root/x\"}",
        b"\"op\":\"connect\",\"port\":",
        b"{\"op\":\"identity\",\"vm_name\":\"a\",\"hostname\":\"a\",\"entropy\":[1],\"time\":{\"secs\":1,\"nanos\":2}}",
        b"{\"rows\":24,\"cols\":80}",
        b"{\"code\":0,\"signal\":9}",
        b"BANGER-SYNC ",
        b"BANGER-READY ",
        b"\n",
        b"null",
        b"18446744073709551616",
    ],
};

pub fn run(data: &[u8]) -> u64 {
    // No structured form: frames are short binary headers that mutation
    // reaches, and the payloads come from the dictionary and the corpus.
    let data = data.strip_prefix(&[STRUCTURED]).unwrap_or(data);
    let frames = check_frames(data);
    let lines = check_lines(data);
    // The config drive: JSON up to the first NUL.
    let drive = u64::from(GuestConfig::from_drive(data).is_ok());
    mix(mix(frames, lines), drive)
}

/// Hands out its bytes in pieces, never pending.
struct Pieces<'a> {
    rest: &'a [u8],
    consumed: usize,
    rng: Rng,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let most = match self.rng.below(3) {
            0 => 1,
            1 => 1 + self.rng.below(8),
            _ => usize::MAX,
        };
        let n = most.min(buf.remaining()).min(self.rest.len());
        let (head, tail) = self.rest.split_at(n);
        buf.put_slice(head);
        self.rest = tail;
        self.consumed += n;
        Poll::Ready(Ok(()))
    }
}

/// Polls a future that cannot be pending (it reads from [`Pieces`]).
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("read_frame waited on a reader that is always ready"),
    }
}

fn check_frames(data: &[u8]) -> u64 {
    let mut r = Pieces {
        rest: data,
        consumed: 0,
        rng: Rng::from_bytes(data),
    };
    // The outcome: the kinds read, how their payloads parsed, how it ended.
    let mut outcome = 0;
    for _ in 0..64 {
        let before = r.consumed;
        let (result, peak) = peak_during(|| ready(read_frame(&mut r)));
        assert!(peak <= MAX_FRAME + 4096, "read_frame held {peak} bytes");
        match result {
            Ok(Some(frame)) => {
                assert!(frame.payload.len() <= MAX_FRAME);
                assert_eq!(
                    frame.encode(),
                    &data[before..r.consumed],
                    "a frame re-encodes to other bytes than it was read from"
                );
                outcome |= 1 << (frame.kind as u64);
                outcome |= check_payload(&frame) << 16;
            }
            Ok(None) => {
                assert_eq!(r.consumed, data.len(), "a clean end before the input's end");
                return outcome | 1;
            }
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof),
                    "read_frame failed with {e:?}"
                );
                return mix(outcome, outcome_of(&e.to_string()));
            }
        }
    }
    outcome
}

/// Parses a payload as the type its kind carries (both ends' view).
/// Parses a payload as the type its kind carries (both ends' view);
/// returns a bit for each type it parsed as.
fn check_payload(frame: &Frame) -> u64 {
    let parsed = match frame.kind {
        FrameKind::Request => vec![
            round_trip::<Envelope>(frame),
            round_trip::<SessionRequest>(frame),
        ],
        FrameKind::Response => vec![
            round_trip::<HealthResponse>(frame),
            round_trip::<ArchiveStats>(frame),
            round_trip::<SessionInfo>(frame),
            round_trip::<Vec<SessionInfo>>(frame),
            round_trip::<IdentityReport>(frame),
        ],
        FrameKind::Error => vec![round_trip::<ErrorBody>(frame)],
        FrameKind::Started => vec![round_trip::<Started>(frame)],
        FrameKind::Signal => vec![round_trip::<SignalMsg>(frame)],
        FrameKind::Resize => vec![round_trip::<Resize>(frame)],
        FrameKind::Exit => vec![round_trip::<ExitStatus>(frame)],
        FrameKind::Stdin | FrameKind::StdinEof | FrameKind::Stdout | FrameKind::Stderr => vec![],
    };
    let bits = parsed.iter().fold(0, |acc, ok| acc << 1 | u64::from(*ok));
    bits << (4 * (frame.kind as u64 % 8))
}

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + Debug>(frame: &Frame) -> bool {
    match frame.parse::<T>() {
        Ok(v) => {
            let again: T = Frame::json(frame.kind, &v)
                .parse()
                .expect("a parsed payload parses again once serialized");
            assert_eq!(again, v, "a payload changed through serialization");
            true
        }
        Err(_) => false,
    }
}

fn check_lines(data: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(data);
    let mut outcome = 0;
    for line in text.lines().take(8) {
        if let Some(nonce) = parse_sync(line) {
            assert!(!nonce.is_empty());
            assert_eq!(parse_sync(sync_line(nonce).trim_end()), Some(nonce));
            outcome |= 1;
        }
        if let Some((nonce, protocol)) = parse_ready(line) {
            assert!(!nonce.is_empty() && !nonce.contains(char::is_whitespace));
            let again = ready_line(nonce, protocol);
            assert_eq!(parse_ready(again.trim_end()), Some((nonce, protocol)));
            outcome |= 2;
        }
    }
    outcome
}
