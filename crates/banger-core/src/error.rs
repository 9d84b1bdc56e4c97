//! The core's error type. Variants are typed causes that keep their source;
//! [`Error::code`] maps each to the API's stable [`ErrorCode`] in one place,
//! and [`chain`] prints the whole cause chain once, at the edge.

use banger_api::{ApiError, ErrorCode, VmState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field (or config key) with a value banger refuses.
    #[error("{field} {problem}")]
    Invalid { field: String, problem: String },
    #[error(transparent)]
    UnknownWord(#[from] banger_api::UnknownWord),
    #[error("no vm named {name:?}: see `banger vm list`")]
    VmNotFound { name: String },
    #[error(
        "no image named {name:?}: see `banger image list`, or build it with `banger image build`"
    )]
    ImageNotFound { name: String },
    #[error("no session named {name:?}: see `banger vm session list`")]
    SessionNotFound { name: String },
    #[error("vm {vm:?} has no snapshot named {name:?}: see `banger vm snapshot list {vm}`")]
    SnapshotNotFound { vm: String, name: String },
    #[error(
        "vm {vm:?} already has a snapshot named {name:?}: pick another --name, or delete it with `banger vm snapshot delete {vm} {name}`"
    )]
    SnapshotExists { vm: String, name: String },
    #[error("no operation {id:?}")]
    OperationNotFound { id: String },
    #[error("vm {name:?} is {state}{}", refusal(*.action, .name))]
    WrongState {
        name: String,
        state: VmState,
        action: Action,
    },
    #[error("vm {name:?} is paused ({reason}): {hint}")]
    Paused {
        name: String,
        reason: &'static str,
        hint: String,
    },
    #[error(
        "the disk holding {} is full ({free_mib} MiB free; {action} needs {need_mib} MiB): \
         free space there (delete vms or images you no longer need) and try again",
        dir.display()
    )]
    DiskFull {
        dir: std::path::PathBuf,
        free_mib: u64,
        need_mib: u64,
        action: &'static str,
        #[source]
        source: Option<Box<Error>>,
    },
    #[error("image {name:?} already exists: {hint}")]
    ImageExists { name: String, hint: &'static str },
    #[error("port {port} on 127.0.0.1 is in use: pick another --publish host port")]
    PortInUse { port: u16 },
    #[error("no free address left in {subnet}: delete a vm or widen bridge_subnet")]
    NoFreeAddress { subnet: banger_sys::net::Ipv4Cidr },
    #[error("{what} needs root (or CAP_NET_ADMIN): {hint}")]
    NeedsPrivilege {
        what: &'static str,
        hint: &'static str,
    },
    #[error("engine {engine} is not available on this daemon: {hint}")]
    EngineUnavailable {
        engine: banger_api::EngineKind,
        hint: &'static str,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("guest agent")]
    Agent(#[from] crate::agent::AgentError),
    #[error(transparent)]
    Disk(#[from] crate::disks::DiskError),
    #[error(transparent)]
    Network(#[from] crate::net::NetError),
    #[error(transparent)]
    Image(#[from] banger_image::ImageError),
    #[error(transparent)]
    Manifest(#[from] banger_image::ManifestError),
    /// A build request the Debian installer refuses (suite, package names).
    #[error(transparent)]
    Recipe(#[from] banger_image::DebianError),
    #[error("the guest agent did not answer within {secs} s; last console lines: {console}")]
    BootTimeout { secs: u64, console: String },
    #[error(
        "the guest did not come up: the engine exited during boot; last console lines: {console}{engine_log}"
    )]
    EngineExited { console: String, engine_log: String },
    #[error(
        "the guest agent of {name:?} did not answer within {secs} s; last console lines: {console}"
    )]
    AgentUnreachable {
        name: String,
        secs: u64,
        console: String,
    },
    #[error("the guest did not power off within {secs} s")]
    PowerOffTimeout { secs: u64 },
    #[error(
        "sshd in {name:?} did not answer within {secs} s ({last}); does the image have openssh-server? \
         build one with `banger image build --preset debian`"
    )]
    SshTimeout {
        name: String,
        secs: u64,
        last: String,
    },
    #[error("{0}")]
    Guest(String),
    #[error(
        "cannot find the banger-agent binary: set agent_bin in config.toml or BANGER_AGENT_BIN, \
         or install it next to bangerd (the README's setup command builds it)"
    )]
    AgentBinaryMissing,
    #[error("found no banger-agent binary the guest can run")]
    AgentBinaryUnusable {
        #[source]
        source: banger_image::InitramfsError,
    },
    #[error("file_sync[{entry}]: cannot copy {host} to the guest's {guest}")]
    FileSync {
        entry: usize,
        host: std::path::PathBuf,
        guest: String,
        #[source]
        source: crate::agent::TransferError,
    },
    #[error("{what}")]
    Transfer {
        what: String,
        #[source]
        source: crate::agent::TransferError,
    },
    #[error("git failed in {dir}")]
    Git {
        dir: std::path::PathBuf,
        #[source]
        source: banger_sys::command::CommandError,
    },
    #[error("{what}: {hint}")]
    Refused { what: String, hint: String },
    #[error("{what} cancelled")]
    Cancelled { what: String },
    #[error("cannot create the ssh key {path}")]
    SshKey {
        path: std::path::PathBuf,
        #[source]
        source: banger_sys::command::CommandError,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the {task} task failed")]
    Task {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// A lifecycle action, for the message of a state that refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Delete,
    Use,
}

fn refusal(action: Action, name: &str) -> String {
    match action {
        Action::Start => " and cannot be started now".into(),
        Action::Stop => " and cannot be stopped now".into(),
        Action::Delete => "; wait for it, then delete it".into(),
        Action::Use => format!(": start it with `banger vm start {name}`"),
    }
}

impl Error {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// The one place a cause becomes a stable API code.
    pub fn code(&self) -> ErrorCode {
        use crate::store::StoreError as S;
        match self {
            Error::Invalid { .. } | Error::UnknownWord(_) | Error::NeedsPrivilege { .. } => {
                ErrorCode::Invalid
            }
            Error::Manifest(_) | Error::Recipe(_) => ErrorCode::Invalid,
            Error::Image(banger_image::ImageError::InvalidName { .. }) => ErrorCode::Invalid,
            Error::VmNotFound { .. }
            | Error::ImageNotFound { .. }
            | Error::SessionNotFound { .. }
            | Error::SnapshotNotFound { .. }
            | Error::OperationNotFound { .. } => ErrorCode::NotFound,
            Error::WrongState { .. }
            | Error::SnapshotExists { .. }
            | Error::Paused { .. }
            | Error::ImageExists { .. }
            | Error::PortInUse { .. }
            | Error::Store(S::DuplicateVm(_) | S::DuplicateImage(_) | S::ImageInUse { .. }) => {
                ErrorCode::Conflict
            }
            Error::NoFreeAddress { .. } | Error::Store(S::AddressTaken(_)) => ErrorCode::Busy,
            Error::Store(_) | Error::Task { .. } => ErrorCode::Internal,
            Error::Engine(_)
            | Error::Agent(_)
            | Error::BootTimeout { .. }
            | Error::EngineExited { .. }
            | Error::AgentUnreachable { .. }
            | Error::PowerOffTimeout { .. }
            | Error::SshTimeout { .. }
            | Error::Guest(_)
            | Error::FileSync { .. }
            | Error::Transfer { .. }
            | Error::EngineUnavailable { .. } => ErrorCode::Engine,
            Error::Disk(_)
            | Error::Network(_)
            | Error::Image(_)
            | Error::AgentBinaryMissing
            | Error::AgentBinaryUnusable { .. }
            | Error::SshKey { .. }
            | Error::Git { .. }
            | Error::DiskFull { .. }
            | Error::Io { .. } => ErrorCode::Host,
            Error::Refused { .. } => ErrorCode::Conflict,
            Error::Cancelled { .. } => ErrorCode::Cancelled,
        }
    }

    pub fn to_api(&self) -> ApiError {
        ApiError {
            code: self.code(),
            message: chain(self),
        }
    }
}

/// `err: cause: cause`, skipping repeats.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty() && parts.last().is_none_or(|p| !p.ends_with(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_reads_as_one_sentence() {
        let e = Error::Io {
            context: "cannot write /x".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(chain(&e), "cannot write /x: disk full");
        assert_eq!(e.code(), ErrorCode::Host);
    }

    #[test]
    fn store_conflicts_are_conflicts_and_say_what_to_do() {
        let e = Error::from(crate::store::StoreError::DuplicateVm("web".into()));
        let api = e.to_api();
        assert_eq!(api.code, ErrorCode::Conflict);
        assert!(api.message.starts_with("a vm named \"web\" already exists"));
    }

    #[test]
    fn refusals_name_the_state_and_the_way_out() {
        let e = Error::WrongState {
            name: "web".into(),
            state: VmState::Stopped,
            action: Action::Use,
        };
        assert_eq!(
            e.to_string(),
            "vm \"web\" is stopped: start it with `banger vm start web`"
        );
        assert_eq!(e.code(), ErrorCode::Conflict);
    }

    #[test]
    fn agent_errors_say_they_come_from_the_guest_agent() {
        let e = Error::from(crate::agent::AgentError::Closed);
        assert_eq!(chain(&e), "guest agent: the agent channel closed");
        assert_eq!(e.code(), ErrorCode::Engine);
    }
}
