//! Wire types of guest sessions: long-running processes the agent keeps in
//! the guest, independent of any host connection or stream, so they survive
//! a daemon restart and a client that goes away. Owns the request and
//! answer shapes and the name rule; owns no behaviour (the agent's
//! `sessions` module does).
//!
//! A session request is `Request::Session`, so on the wire its JSON is the
//! envelope's request with an `action`:
//! `{"op":"session","action":"start","name":"build","argv":["make"]}`.
//!
//! How each action's stream runs after the request frame:
//!
//! 1. `start`: the agent checks the name (`bad_request`), that no running
//!    session has it (`conflict`), then the preflight: the working
//!    directory exists and is a directory, and `argv[0]` resolves to an
//!    executable. A failed preflight answers an `Error` frame with code
//!    `preflight_failed` and a message naming what is missing, and is also
//!    recorded as a `failed` session whose `error` says the same (so `list`
//!    shows it). Otherwise the process starts and one `Response` frame
//!    carries its [`SessionInfo`].
//! 2. `list`: one `Response` frame with every session, running and ended,
//!    as a JSON array of [`SessionInfo`] sorted by start time.
//! 3. `attach`: a `Response` frame with the [`SessionInfo`], then the output
//!    from byte offset `from` (default: the start of the scrollback) as
//!    `Stdout` frames, then live output. The host's `Stdin` frames go to the
//!    session's stdin and `StdinEof` closes it (for every attacher). When the
//!    session ends, one `Exit` frame and the stream closes. When the host
//!    closes its side, only this attacher goes away. Any number of attachers
//!    may be attached at once.
//! 4. `logs`: a `Response` frame, then the output from `from` as `Stdout`
//!    frames; without `follow` the stream then closes; with `follow`, live
//!    output until the session ends (`Exit` frame) or the host closes.
//! 5. `stop`: SIGTERM to the session's process group, SIGKILL after
//!    `grace_secs`; one `Response` frame with the final [`SessionInfo`]
//!    once the process exited. Stopping an ended session answers its info.
//!
//! A session that never ran (`failed`) has no output: `attach` and `logs`
//! close the stream right after the `Response` frame, without an `Exit`.
//! Unknown names get an `Error` frame with code `not_found`.
//!
//! Output offsets count bytes of the session's whole output (stdout and
//! stderr merged, in the order the agent read them). The agent keeps only
//! the most recent part (its scrollback is bounded); `retained_from` is the
//! first offset it still has, and a `from` before it starts there.

use serde::{Deserialize, Serialize};

/// Longest session name.
pub const MAX_NAME_LEN: usize = 63;
/// Seconds `stop` waits after SIGTERM before SIGKILL, unless told otherwise.
pub const DEFAULT_STOP_GRACE_SECS: u32 = 10;

/// One session action; see the module doc for each one's stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SessionRequest {
    Start {
        name: String,
        argv: Vec<String>,
        /// Working directory; the agent's default (`/root`) when absent.
        #[serde(default)]
        cwd: Option<String>,
        /// Extra environment on top of exec's defaults (PATH, HOME, TERM).
        #[serde(default)]
        env: Vec<(String, String)>,
    },
    List,
    /// Pipe mode: output out, stdin in, detach by closing the stream.
    Attach {
        name: String,
        /// First output offset wanted; the start of the scrollback when absent.
        #[serde(default)]
        from: Option<u64>,
    },
    Logs {
        name: String,
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        from: Option<u64>,
    },
    Stop {
        name: String,
        /// Seconds between SIGTERM and SIGKILL; [`DEFAULT_STOP_GRACE_SECS`] when absent.
        #[serde(default)]
        grace_secs: Option<u32>,
    },
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Running,
    /// The process ended (by itself, or stopped).
    Exited,
    /// The process never started; `error` says why.
    Failed,
}

/// What the agent knows about one session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionInfo {
    pub name: String,
    pub argv: Vec<String>,
    /// The working directory it runs (or was to run) in.
    pub cwd: String,
    pub state: SessionState,
    /// Exit code, or 128 + signal when killed by one (as a shell reports it).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The pid it runs (or ran) as, also its process group; `None` if it
    /// never started.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds, once it ended.
    #[serde(default)]
    pub ended_at: Option<i64>,
    /// Launch diagnostics of a `failed` session.
    #[serde(default)]
    pub error: Option<String>,
    /// Bytes of output produced so far: the offset the next byte will have.
    #[serde(default)]
    pub output_bytes: u64,
    /// The first output offset still in the scrollback.
    #[serde(default)]
    pub retained_from: u64,
}

/// Whether `name` is a valid session name: 1 to [`MAX_NAME_LEN`] characters
/// of `a-z`, `0-9`, `.`, `_`, `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, Request};

    fn json(request: SessionRequest) -> String {
        serde_json::to_string(&Envelope::new(Request::Session(request))).unwrap()
    }

    #[test]
    fn session_requests_carry_op_and_action_side_by_side() {
        assert_eq!(
            json(SessionRequest::List),
            r#"{"version":1,"request":{"op":"session","action":"list"}}"#
        );
        assert_eq!(
            json(SessionRequest::Stop {
                name: "web".into(),
                grace_secs: Some(3)
            }),
            r#"{"version":1,"request":{"op":"session","action":"stop","name":"web","grace_secs":3}}"#
        );
    }

    #[test]
    fn every_session_request_round_trips() {
        let all = [
            SessionRequest::Start {
                name: "build".into(),
                argv: vec!["make".into(), "-j4".into()],
                cwd: Some("/root/src".into()),
                env: vec![("CC".into(), "clang".into())],
            },
            SessionRequest::List,
            SessionRequest::Attach {
                name: "build".into(),
                from: Some(10),
            },
            SessionRequest::Logs {
                name: "build".into(),
                follow: true,
                from: None,
            },
            SessionRequest::Stop {
                name: "build".into(),
                grace_secs: None,
            },
        ];
        for request in all {
            let text = json(request.clone());
            let back: Envelope = serde_json::from_str(&text).unwrap();
            assert_eq!(back.request, Request::Session(request), "{text}");
        }
    }

    #[test]
    fn optional_fields_may_be_left_out() {
        let text =
            r#"{"version":1,"request":{"op":"session","action":"start","name":"a","argv":["sh"]}}"#;
        let back: Envelope = serde_json::from_str(text).unwrap();
        assert_eq!(
            back.request,
            Request::Session(SessionRequest::Start {
                name: "a".into(),
                argv: vec!["sh".into()],
                cwd: None,
                env: vec![],
            })
        );
    }

    #[test]
    fn info_serializes_its_state_in_snake_case() {
        let info = SessionInfo {
            name: "a".into(),
            argv: vec!["true".into()],
            cwd: "/root".into(),
            state: SessionState::Exited,
            exit_code: Some(0),
            signal: None,
            pid: Some(42),
            started_at: 1,
            ended_at: Some(2),
            error: None,
            output_bytes: 5,
            retained_from: 0,
        };
        let value = serde_json::to_value(&info).unwrap();
        assert_eq!(value["state"], "exited");
        assert_eq!(serde_json::from_value::<SessionInfo>(value).unwrap(), info);
    }

    #[test]
    fn names_are_short_lowercase_words() {
        for good in ["a", "web-1", "build.x_2", &"a".repeat(MAX_NAME_LEN)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Web", "a b", "a/b", "ü", &"a".repeat(MAX_NAME_LEN + 1)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
