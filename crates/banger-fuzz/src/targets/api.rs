//! `api`: the JSON bodies bangerd decodes from a client (the request
//! types) and the CLI decodes from a daemon (views, events, errors), and
//! the word enums on their own.
//!
//! Invariants: no panic; a request that decodes serializes back to JSON
//! that decodes to the same value, and every key of the object it came
//! from is one of its fields (unknown fields are rejected); a word enum
//! decodes from exactly the words in its `ALL`, and refuses anything else
//! with a message listing them.

use super::{STRUCTURED, Target, mix, outcome_of};
use arbitrary::Unstructured;
use banger_api::{
    ApiError, BuildImage, CreateVm, EngineKind, ExportWorkspace, Image, NetworkMode, Operation,
    OperationEvent, PrepareWorkspace, Preset, RegisterImage, Session, SessionState, SshTarget,
    StartSession, Vm, WorkspaceMode,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt::{Debug, Display};
use std::str::FromStr;

pub const TARGET: Target = Target {
    name: "api",
    about: "CLI⇄daemon JSON: requests (round trip, unknown fields refused), views, word enums",
    run,
    max_len: 4096,
    dictionary: &[
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b"null",
        b"true",
        b"false",
        b"-1",
        b"1e999",
        b"18446744073709551616",
        b"\"\\u0000\"",
        b"\"\\ud800\"",
        b"\"name\"",
        b"\"image\"",
        b"\"network\"",
        b"\"engine\"",
        b"\"publish\"",
        b"\"preset\"",
        b"\"mode\"",
        b"\"argv\"",
        b"\"env\"",
        b"\"bridge\"",
        b"\"qemu\"",
        b"\"full_copy\"",
        b"\"surprise\"",
    ],
};

/// Every field name of the request types, and a stranger.
const KEYS: &[&str] = &[
    "name",
    "image",
    "cpus",
    "memory_mib",
    "disk_size_mib",
    "network",
    "publish",
    "engine",
    "allow_hosts",
    "allow_cidrs",
    "host_access",
    "preset",
    "force",
    "packages",
    "suite",
    "from_manifest",
    "kernel",
    "rootfs",
    "initrd",
    "modules",
    "from",
    "mode",
    "git_ref",
    "exclude",
    "guest_path",
    "branch",
    "patch",
    "include_uncommitted",
    "argv",
    "cwd",
    "env",
    "surprise",
    "event",
    "code",
    "message",
];

/// Words the enums and fields know, and near misses.
const WORDS: &[&str] = &[
    "bridge",
    "user",
    "none",
    "qemu",
    "firecracker",
    "debian",
    "minimal",
    "tracked",
    "full_copy",
    "running",
    "exited",
    "failed",
    "ended",
    "Bridge",
    "bridge ",
    "",
    "8080:80",
    "0:80",
    "/abs/path",
    "web-1",
    "stage_started",
    "done",
    "invalid",
    "not_found",
];

pub fn run(data: &[u8]) -> u64 {
    let built;
    let json = match data.split_first() {
        Some((&STRUCTURED, rest)) => {
            built = serde_json::to_vec(&value(&mut Unstructured::new(rest), 0))
                .expect("a Value serializes");
            &built[..]
        }
        _ => data,
    };
    check(json)
}

pub fn check(json: &[u8]) -> u64 {
    let keys = top_level_keys(json);
    // The outcome: which decodes succeeded, and why the first one failed.
    let create = request::<CreateVm>(json, &keys);
    let decoded = [
        create.is_ok(),
        request::<BuildImage>(json, &keys).is_ok(),
        request::<RegisterImage>(json, &keys).is_ok(),
        request::<PrepareWorkspace>(json, &keys).is_ok(),
        request::<ExportWorkspace>(json, &keys).is_ok(),
        request::<StartSession>(json, &keys).is_ok(),
        word::<NetworkMode>(json, NetworkMode::ALL),
        word::<Preset>(json, Preset::ALL),
        word::<EngineKind>(json, EngineKind::ALL),
        word::<WorkspaceMode>(json, WorkspaceMode::ALL),
        word::<SessionState>(json, SessionState::ALL),
        // What the CLI reads from the daemon: no invariant beyond no panic.
        serde_json::from_slice::<Vm>(json).is_ok(),
        serde_json::from_slice::<Vec<Image>>(json).is_ok(),
        serde_json::from_slice::<Operation>(json).is_ok(),
        serde_json::from_slice::<OperationEvent>(json).is_ok(),
        serde_json::from_slice::<ApiError>(json).is_ok(),
        serde_json::from_slice::<Session>(json).is_ok(),
        serde_json::from_slice::<SshTarget>(json).is_ok(),
    ];
    let bits = decoded.iter().fold(0, |acc, ok| acc << 1 | u64::from(*ok));
    mix(bits, create.err().map_or(0, |e| outcome_of(&e)))
}

/// The keys of `json` when it is an object.
fn top_level_keys(json: &[u8]) -> Option<Vec<String>> {
    match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(map)) => Some(map.keys().cloned().collect()),
        _ => None,
    }
}

fn request<T>(json: &[u8], keys: &Option<Vec<String>>) -> Result<(), String>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    match serde_json::from_slice::<T>(json) {
        Ok(v) => {
            let out = serde_json::to_value(&v).expect("a request serializes");
            let again: T = serde_json::from_value(out.clone()).expect("a request decodes again");
            assert_eq!(again, v, "a request changed through serialization");
            let fields = out.as_object().expect("requests are objects");
            if let Some(keys) = keys {
                for k in keys {
                    assert!(
                        fields.contains_key(k),
                        "{} accepted the unknown field {k:?}",
                        std::any::type_name::<T>()
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn word<W>(json: &[u8], all: &[W]) -> bool
where
    W: DeserializeOwned + FromStr + Display + PartialEq + Debug + Copy,
    W::Err: Display,
{
    let from_json = serde_json::from_slice::<W>(json);
    if let Ok(w) = &from_json {
        let raw: Value = serde_json::from_slice(json).expect("decoded JSON is JSON");
        assert_eq!(raw.as_str(), Some(w.to_string().as_str()));
    }
    // The same set through `FromStr`, as the CLI parses its flags.
    let text = String::from_utf8_lossy(json);
    let parsed = text.parse::<W>();
    let known = all.iter().any(|w| w.to_string() == text);
    assert_eq!(
        parsed.is_ok(),
        known,
        "{text:?} parsed as a word: {}",
        known
    );
    if let Err(e) = parsed {
        let message = e.to_string();
        assert!(
            all.iter().all(|w| message.contains(&w.to_string())),
            "{message:?} does not list the known words"
        );
    }
    from_json.is_ok()
}

/// A JSON value from `arbitrary`: objects keyed by the request fields,
/// words the enums know, numbers at the edges of their types.
fn value(u: &mut Unstructured, depth: u32) -> Value {
    let pick = if depth == 0 {
        7
    } else {
        u.int_in_range(0..=if depth > 3 { 5 } else { 7 })
            .unwrap_or(0)
    };
    match pick {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary().unwrap_or(false)),
        2 => {
            let n: i64 = *u
                .choose(&[0, 1, -1, 64, 65, 4096, i64::from(u32::MAX) + 1, i64::MIN])
                .unwrap_or(&0);
            Value::from(n)
        }
        3 => Value::from(u.arbitrary::<f64>().unwrap_or(0.5)),
        4 => Value::from(*u.choose(WORDS).unwrap_or(&"")),
        5 => Value::from(u.arbitrary::<String>().unwrap_or_default()),
        6 => {
            let n = u.int_in_range(0..=4).unwrap_or(0);
            Value::Array((0..n).map(|_| value(u, depth + 1)).collect())
        }
        _ => {
            let n = u.int_in_range(0..=6).unwrap_or(0);
            let mut map = Map::new();
            for _ in 0..n {
                let key = u.choose(KEYS).unwrap_or(&"name").to_string();
                map.insert(key, value(u, depth + 1));
            }
            Value::Object(map)
        }
    }
}
