//! The stable error codes of the `/v1` API. Every non-2xx answer carries one
//! in its [`crate::ApiError`] body, so a CLI, a web page or an SDK can branch
//! on the cause without reading the message. The daemon maps each code to
//! its HTTP status in one place (`bangerd`'s error response).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or asks for something impossible here
    /// (bad name, size out of range, bridge mode without privileges).
    Invalid,
    /// The named VM, image or operation does not exist.
    NotFound,
    /// The request clashes with current state: the name is taken, the VM is
    /// in a state that refuses the action, the image is in use.
    Conflict,
    /// A shared resource is exhausted for now (addresses, concurrent
    /// creates): try again later or free some.
    Busy,
    /// The VM's engine or its guest failed: it exited, did not boot, or its
    /// agent did not answer.
    Engine,
    /// A host tool or resource failed: disks, network set-up, image builds.
    Host,
    /// A bug or a broken store: the message says what, the daemon log more.
    Internal,
    /// The operation was cancelled on request (Ctrl-C during an image
    /// build); what it had made is gone.
    Cancelled,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Busy => "busy",
            ErrorCode::Engine => "engine",
            ErrorCode::Host => "host",
            ErrorCode::Internal => "internal",
            ErrorCode::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case_on_the_wire() {
        for code in [
            ErrorCode::Invalid,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::Busy,
            ErrorCode::Engine,
            ErrorCode::Host,
            ErrorCode::Internal,
            ErrorCode::Cancelled,
        ] {
            let wire = serde_json::to_string(&code).unwrap();
            assert_eq!(wire, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&wire).unwrap(), code);
        }
    }
}
