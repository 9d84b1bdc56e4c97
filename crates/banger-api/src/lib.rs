//! CLI⇄daemon wire types: the JSON bodies of the daemon's `/v1` HTTP API on
//! its unix socket. Serde only; no transport, no logic beyond validation
//! helpers that both sides share.
//!
//! Routes (all JSON unless noted):
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | GET | `/v1/daemon` | → [`DaemonStatus`] |
//! | POST | `/v1/daemon/shutdown` | → 204 |
//! | GET | `/v1/vms` | → `Vec<Vm>` |
//! | POST | `/v1/vms` | [`CreateVm`] → 202 [`OperationRef`] |
//! | GET | `/v1/vms/{name}` | → [`Vm`] |
//! | DELETE | `/v1/vms/{name}` | → 202 [`OperationRef`] |
//! | POST | `/v1/vms/{name}/start` `…/stop` `…/restart` | → 202 [`OperationRef`] |
//! | GET | `/v1/vms/{name}/logs?follow=bool` | → `text/plain` console, streamed while following |
//! | POST | `/v1/vms/{name}/exec` | [`banger_proto::ExecRequest`]-shaped JSON in the `X-Banger-Exec` header, `Upgrade: banger-exec` → 101, then raw agent frames both ways |
//! | GET | `/v1/vms/{name}/ssh?wait=bool` | → [`SshTarget`]; with `wait`, once sshd answers |
//! | POST | `/v1/vms/{name}/connect?port=N` | `Upgrade: banger-connect` → 101, then the raw bytes of a TCP connection to guest port N |
//! | GET | `/v1/images` | → `Vec<Image>` |
//! | POST | `/v1/images/build` | [`BuildImage`] → 202 [`OperationRef`] |
//! | POST | `/v1/images/register` | [`RegisterImage`] → 202 [`OperationRef`] |
//! | GET | `/v1/images/{name}` | → [`Image`] |
//! | DELETE | `/v1/images/{name}` | → 204 |
//! | GET | `/v1/operations/{id}` | → [`Operation`] |
//! | GET | `/v1/operations/{id}/events` | → `text/event-stream` of [`OperationEvent`] (`data: <json>\n\n`), ending after `done` |
//! | POST | `/v1/vms/{name}/workspace` | [`PrepareWorkspace`] → 202 [`OperationRef`] |
//! | POST | `/v1/vms/{name}/workspace/export` | [`ExportWorkspace`] → 202 [`OperationRef`] |
//! | POST | `/v1/vms/{name}/files/unpack?path=P` | `Upgrade: banger-files` → 101; the client sends the archive as agent `Stdin` frames and `StdinEof`, and reads the agent's `Response` (stats) or `Error` frame |
//! | POST | `/v1/vms/{name}/files/pack?path=P` | `Upgrade: banger-files` → 101; the client reads the archive of P as agent `Stdout` frames, then `Response` or `Error` |
//! | GET | `/v1/vms/{name}/sessions` | → `Vec<Session>` |
//! | POST | `/v1/vms/{name}/sessions` | [`StartSession`] → 201 [`Session`] |
//! | POST | `/v1/vms/{name}/sessions/{s}/attach` | `Upgrade: banger-attach` → 101; agent frames: `Response` (session), `Stdout`…, `Exit`; the client may send `Stdin`/`StdinEof`; closing detaches |
//! | GET | `/v1/vms/{name}/sessions/{s}/logs?follow=bool` | → `application/octet-stream`: scrollback, then live output while following |
//! | POST | `/v1/vms/{name}/sessions/{s}/stop` | → [`Session`] once it has ended |
//! | GET | `/v1/doctor` | → [`DoctorReport`] |
//! | GET | `/v1/vms/{name}/snapshots` | → `Vec<Snapshot>` |
//! | POST | `/v1/vms/{name}/snapshots` | [`TakeSnapshot`] → 202 [`OperationRef`] |
//! | DELETE | `/v1/vms/{name}/snapshots/{s}` | → 204 |
//! | POST | `/v1/vms/{name}/restore` | [`RestoreSnapshot`] → 202 [`OperationRef`] |
//! | POST | `/v1/web` | → [`WebAddress`]; the web page's listener starts on the first call |
//!
//! Every error is an [`ApiError`] body with a stable [`ErrorCode`]. Request
//! bodies refuse fields they do not have (`invalid`, naming the field), so
//! a misspelt or newer option is never silently dropped.

pub mod error;
pub mod modes;
pub mod paths;
pub mod snapshot;
pub mod text;
pub mod units;

pub use error::ErrorCode;
pub use modes::{EngineKind, NetworkMode, Preset, SessionState, UnknownWord, WorkspaceMode};
pub use snapshot::{
    ForkVm, MAX_FORKS, RestoreSnapshot, Snapshot, TakeSnapshot, validate_snapshot_name,
};

use serde::{Deserialize, Serialize};

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    /// The stable cause, for programs to branch on.
    pub code: ErrorCode,
    /// A sentence meant for humans, naming the problem and what to do.
    pub message: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Creating,
    Running,
    Stopped,
    Failed,
    Deleting,
    /// Running, but held paused by its engine after a host disk error
    /// (see [`Vm::paused`]). Observed, never recorded.
    Paused,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Failed => "failed",
            VmState::Deleting => "deleting",
            VmState::Paused => "paused",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub state: VmState,
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_size_mib: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// `kvm` or `tcg` while running.
    #[serde(default)]
    pub accel: Option<String>,
    /// Engine process id while running.
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The VM's own directory on the host (disks, console log).
    pub dir: String,
    #[serde(default = "default_network")]
    pub network: NetworkMode,
    /// The VMM that runs it.
    #[serde(default = "default_engine")]
    pub engine: EngineKind,
    /// The guest's address on the bridge (bridge mode).
    #[serde(default)]
    pub ip: Option<String>,
    /// `<name>.<suffix>` when the daemon serves DNS for it (bridge mode).
    #[serde(default)]
    pub dns_name: Option<String>,
    /// Ports forwarded from 127.0.0.1 (user mode), including ssh's.
    #[serde(default)]
    pub ports: Vec<PortForward>,
    /// Egress limited to these hosts and networks (bridge mode), if limited.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Whether the guest may reach the host's own services.
    #[serde(default)]
    pub host_access: bool,
    /// Why the engine holds the guest paused (`host disk full`), while it does.
    #[serde(default)]
    pub paused: Option<String>,
}

fn default_network() -> NetworkMode {
    NetworkMode::None
}

fn default_engine() -> EngineKind {
    EngineKind::Qemu
}

/// A guest TCP port reachable on the host's loopback.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
}

impl PortForward {
    /// Parses `HOST:GUEST` (both 1-65535).
    pub fn parse(s: &str) -> Result<PortForward, String> {
        let bad =
            || format!("invalid --publish {s:?}: use HOST:GUEST with ports 1-65535, e.g. 8080:80");
        let (h, g) = s.split_once(':').ok_or_else(bad)?;
        let host: u16 = h.trim().parse().map_err(|_| bad())?;
        let guest: u16 = g.trim().parse().map_err(|_| bad())?;
        if host == 0 || guest == 0 {
            return Err(bad());
        }
        Ok(PortForward { host, guest })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub disk_size_mib: Option<u64>,
    /// The daemon's default when absent.
    #[serde(default)]
    pub network: Option<NetworkMode>,
    /// `HOST:GUEST` forwards on 127.0.0.1 (user mode).
    #[serde(default)]
    pub publish: Vec<String>,
    /// The VMM to run it under; the daemon's default when absent.
    #[serde(default)]
    pub engine: Option<EngineKind>,
    /// Bridge mode: egress only to these host names (resolved at each boot)
    /// and `allow_cidrs`; without either, egress is the config's `egress`.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// Bridge mode: egress only to these networks (`10.0.0.0/8`, `1.2.3.4`).
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    /// Let the guest reach services on the host (the bridge address in
    /// bridge mode, the host's loopback in user mode); off by default.
    #[serde(default)]
    pub host_access: bool,
    /// `VM/SNAPSHOT`: the new VM starts from that snapshot instead of
    /// booting (its CPUs, memory, image, disk size and network are the
    /// snapshot's VM's).
    #[serde(default)]
    pub from_snapshot: Option<String>,
    /// Boot even when the image has a warm snapshot that fits.
    #[serde(default)]
    pub cold: bool,
    /// Delete the VM once the process that sent this request has exited
    /// (`vm run --rm`: also when that process is killed). The daemon knows
    /// the process from the connection, not from the request.
    #[serde(default)]
    pub delete_with_caller: bool,
    /// Delete the VM if that process exits before the create has finished
    /// (Ctrl-C during `vm create`); a VM that came up stays.
    #[serde(default)]
    pub cancel_with_caller: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OperationRef {
    pub id: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    Create,
    Start,
    Stop,
    Restart,
    Delete,
    ImageBuild,
    ImageRegister,
    WorkspacePrepare,
    WorkspaceExport,
    Snapshot,
    Restore,
    /// `image warm`: its target is the image.
    ImageWarm,
    /// `vm fork`: its target is the VM forked; each fork is a create of
    /// its own.
    Fork,
    /// A standby made ahead for a warm image's next VM: its target is the
    /// image.
    Standby,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stage {
    pub name: String,
    /// Human label, e.g. "wait for agent".
    pub label: String,
    pub state: OperationState,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Operation {
    pub id: String,
    pub kind: OperationKind,
    /// VM or image name the operation acts on.
    pub target: String,
    pub state: OperationState,
    pub stages: Vec<Stage>,
    #[serde(default)]
    pub error: Option<ApiError>,
    pub started_at: i64,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// One server-sent event of an operation's stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum OperationEvent {
    StageStarted {
        name: String,
        label: String,
    },
    StageFinished {
        name: String,
        duration_ms: u64,
        #[serde(default)]
        detail: Option<String>,
    },
    StageFailed {
        name: String,
        duration_ms: u64,
        error: String,
    },
    /// Free-form progress inside a stage (download sizes, etc.).
    Progress {
        name: String,
        message: String,
    },
    /// Last event: the operation's final record.
    Done {
        operation: Operation,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageFile {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Image {
    pub name: String,
    /// `minimal`, `debian`, or `registered`.
    pub source: String,
    pub kernel_version: Option<String>,
    pub created_at: i64,
    pub dir: String,
    pub files: Vec<ImageFile>,
    pub size_bytes: u64,
    /// The Debian suite, for images built by its installer.
    #[serde(default)]
    pub suite: Option<String>,
    /// The packages asked for on top of the suite's base.
    #[serde(default)]
    pub packages: Vec<String>,
    /// The kernel's Debian package as `name=version`.
    #[serde(default)]
    pub kernel_package: Option<String>,
    /// How many packages the root filesystem has installed (the manifest
    /// lists them with their versions).
    #[serde(default)]
    pub installed_packages: usize,
    /// Its warm snapshot (`image warm`), if it has one.
    #[serde(default)]
    pub warm: Option<WarmImage>,
}

/// An image's warm snapshot: the machine it was made for (a VM asking for
/// exactly this is restored from it instead of booted) and whether it can
/// still be used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WarmImage {
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_size_mib: u64,
    pub network: NetworkMode,
    pub engine: EngineKind,
    pub created_at: i64,
    /// Bytes on disk (RAM as far as the guest touched it, disk changes).
    pub size_bytes: u64,
    /// Why it can no longer be used (the image, agent, engine or banger
    /// changed since), if so; `image warm` makes a new one.
    #[serde(default)]
    pub stale: Option<String>,
    /// The image's standby (its next VM made ahead and paused), when there
    /// is one: `ready` or `making`.
    #[serde(default)]
    pub standby: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BuildImage {
    /// Defaults to the preset's name.
    #[serde(default)]
    pub name: Option<String>,
    pub preset: String,
    /// Rebuild even when an image of that name exists.
    #[serde(default)]
    pub force: bool,
    /// Extra distro packages (the `debian` preset).
    #[serde(default)]
    pub packages: Vec<String>,
    /// The Debian suite (the `debian` preset; default bookworm).
    #[serde(default)]
    pub suite: Option<String>,
    /// Rebuild the image an existing manifest describes (absolute path of
    /// a `manifest.json` or an image directory): its preset, suite,
    /// packages and kernel, compared package by package afterwards.
    #[serde(default)]
    pub from_manifest: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegisterImage {
    pub name: String,
    /// Absolute host paths.
    pub kernel: String,
    pub rootfs: String,
    #[serde(default)]
    pub initrd: Option<String>,
    /// A `/lib/modules/<version>` tree whose virtio modules the guest needs.
    #[serde(default)]
    pub modules: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
    /// What to do about a warn or fail.
    #[serde(default)]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DoctorReport {
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub socket: String,
    pub state_dir: String,
    pub started_at: i64,
    pub vms_running: usize,
}

/// How to reach a VM's sshd with the system `ssh`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SshTarget {
    pub user: String,
    /// Address to connect to (the bridge address, or 127.0.0.1 in user mode).
    pub host: String,
    pub port: u16,
    /// Private key to use.
    pub key: String,
    /// When set, there is no route to the guest: tunnel through the agent
    /// channel (`banger vm proxy NAME PORT` as the ProxyCommand).
    #[serde(default)]
    pub proxy: bool,
    /// The known-hosts file holding this VM's pinned host key (read over
    /// the agent channel the first time sshd answers, so it exists after a
    /// `wait`ed answer); check host keys against it, strictly.
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// The name the pinned key is filed under (`HostKeyAlias`).
    #[serde(default)]
    pub host_key_alias: Option<String>,
}

/// `POST /v1/vms/{name}/workspace`: copy a host checkout into the guest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrepareWorkspace {
    /// Absolute host path inside the checkout.
    pub from: String,
    #[serde(default)]
    pub mode: WorkspaceMode,
    /// Check out this commit (detached) instead of the host's HEAD and edits.
    #[serde(default)]
    pub git_ref: Option<String>,
    /// `full_copy`: names (anywhere) or relative paths to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where in the guest; `/root/repo` by default.
    #[serde(default)]
    pub guest_path: Option<String>,
    /// Only the last N commits of history (a shallow repository), for huge
    /// repositories (tracked mode).
    #[serde(default)]
    pub depth: Option<u32>,
}

/// `POST /v1/vms/{name}/workspace/export`: the guest's commits back out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportWorkspace {
    /// Create this branch in the host checkout (never checked out).
    #[serde(default)]
    pub branch: Option<String>,
    /// Or write the commits as a patch series (`git format-patch`) to this
    /// absolute host path.
    #[serde(default)]
    pub patch: Option<String>,
    /// Commit the guest's uncommitted changes on top first (in a
    /// throw-away commit; the guest's own branch is not moved).
    #[serde(default)]
    pub include_uncommitted: bool,
    #[serde(default)]
    pub guest_path: Option<String>,
}

/// `POST /v1/vms/{name}/sessions`: start a long-lived command in the guest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    /// 1-63 characters of `a-z`, `0-9`, `.`, `_`, `-`.
    pub name: String,
    pub argv: Vec<String>,
    /// `/root` when absent.
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// `POST /v1/web`: where the web page is, with its key in the query (the
/// page sets it as a cookie and drops it from the address).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebAddress {
    pub url: String,
}

/// A guest session as `session list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    pub name: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub state: SessionState,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Unix seconds.
    pub started_at: i64,
    #[serde(default)]
    pub ended_at: Option<i64>,
    /// Why it failed to start, or ended.
    #[serde(default)]
    pub error: Option<String>,
    /// Bytes of output so far.
    #[serde(default)]
    pub output_bytes: u64,
}

/// `Upgrade:` protocol token of a session attach (raw agent frames).
pub const ATTACH_UPGRADE: &str = "banger-attach";
/// `Upgrade:` protocol token of a file transfer (raw agent frames).
pub const FILES_UPGRADE: &str = "banger-files";

/// `Upgrade:` protocol token of a raw TCP tunnel to a guest port
/// (`/v1/vms/{name}/connect?port=N`).
pub const CONNECT_UPGRADE: &str = "banger-connect";

/// Header carrying the JSON exec request on the upgrade request.
pub const EXEC_HEADER: &str = "x-banger-exec";
/// `Upgrade:` protocol token of the exec stream.
pub const EXEC_UPGRADE: &str = "banger-exec";

/// VM names: 1-63 chars of `[a-z0-9-]`, starting with a letter or digit,
/// not ending with `-` (a DNS label, since names become host names).
pub fn validate_vm_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("vm name {name:?} must be 1 to 63 characters long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "vm name {name:?} may only contain lowercase letters, digits and '-'"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("vm name {name:?} must not start or end with '-'"));
    }
    Ok(())
}

/// Image names follow the same rule as VM names.
pub fn validate_image_name(name: &str) -> Result<(), String> {
    validate_vm_name(name).map_err(|e| e.replacen("vm name", "image name", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs_parse() {
        assert_eq!(
            PortForward::parse("8080:80"),
            Ok(PortForward {
                host: 8080,
                guest: 80
            })
        );
        assert!(PortForward::parse("80").unwrap_err().contains("HOST:GUEST"));
        assert!(PortForward::parse("0:80").is_err());
        assert!(PortForward::parse("70000:80").is_err());
    }

    #[test]
    fn vm_names_are_dns_labels() {
        assert!(validate_vm_name("web-1").is_ok());
        assert!(validate_vm_name("").unwrap_err().contains("1 to 63"));
        assert!(validate_vm_name(&"a".repeat(64)).is_err());
        assert!(validate_vm_name("Web").unwrap_err().contains("lowercase"));
        assert!(validate_vm_name("a_b").is_err());
        assert!(validate_vm_name("-a").is_err());
        assert!(validate_vm_name("a-").is_err());
    }

    #[test]
    fn operation_events_are_tagged() {
        let ev = OperationEvent::StageStarted {
            name: "boot".into(),
            label: "boot".into(),
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"event":"stage_started","name":"boot","label":"boot"}"#
        );
    }

    #[test]
    fn every_request_refuses_an_unknown_field_by_name() {
        fn refused<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) -> String {
            serde_json::from_str::<T>(json)
                .expect_err("an unknown field is refused")
                .to_string()
        }
        let errors = [
            refused::<CreateVm>(r#"{"name":"web","cpu":2}"#),
            refused::<BuildImage>(r#"{"preset":"debian","cpu":2}"#),
            refused::<RegisterImage>(r#"{"name":"a","kernel":"/k","rootfs":"/r","cpu":2}"#),
            refused::<PrepareWorkspace>(r#"{"from":"/src","cpu":2}"#),
            refused::<ExportWorkspace>(r#"{"branch":"b","cpu":2}"#),
            refused::<StartSession>(r#"{"name":"s","argv":["true"],"cpu":2}"#),
        ];
        for e in errors {
            assert!(e.contains("unknown field `cpu`"), "{e}");
        }
        // Known fields, and absent optional ones, still decode.
        let req: CreateVm = serde_json::from_str(r#"{"name":"web","cpus":2}"#).unwrap();
        assert_eq!(req.cpus, Some(2));
    }

    /// An independent reading of the rule: a DNS label of at most 63
    /// characters of `[a-z0-9-]`, not starting or ending with `-`.
    fn is_dns_label(name: &str) -> bool {
        let b = name.as_bytes();
        let ld = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        (1..=63).contains(&b.len())
            && b.first().is_some_and(ld)
            && b.last().is_some_and(ld)
            && b.iter().all(|c| ld(c) || *c == b'-')
    }

    fn check_name(name: &str) {
        let verdict = validate_vm_name(name);
        assert_eq!(verdict.is_ok(), is_dns_label(name), "{name:?}: {verdict:?}");
        if let Err(e) = verdict {
            assert!(
                e.starts_with("vm name ") && e.contains(&format!("{name:?}")),
                "{e}"
            );
            let image = validate_image_name(name).unwrap_err();
            assert!(image.starts_with("image name "), "{image}");
        } else {
            assert!(validate_image_name(name).is_ok());
        }
    }

    #[test]
    fn names_are_accepted_exactly_when_they_are_dns_labels() {
        // Every string of up to four characters from an alphabet with each
        // class the rule cares about.
        const ALPHABET: &[char] = &['a', 'z', '0', '9', '-', 'A', '_', '.', ' ', 'é'];
        let mut frontier = vec![String::new()];
        let mut names = frontier.clone();
        for _ in 0..4 {
            frontier = frontier
                .iter()
                .flat_map(|n| ALPHABET.iter().map(move |c| format!("{n}{c}")))
                .collect();
            names.extend(frontier.iter().cloned());
        }
        assert_eq!(names.len(), 1 + 10 + 100 + 1000 + 10_000);
        for n in &names {
            check_name(n);
        }
        // Random longer ones around the length limit (xorshift: no
        // dependency, and the same strings every run).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50_000 {
            let len = 55 + (next() % 12) as usize;
            let name: String = (0..len)
                .map(|_| match next() % 40 {
                    0 => '-',
                    1 => 'Q',
                    2 => '_',
                    n => ALPHABET[..4][(n % 4) as usize],
                })
                .collect();
            check_name(&name);
        }
        check_name(&"a".repeat(63));
        check_name(&"a".repeat(64));
        check_name(&format!("{}-", "a".repeat(62)));
    }
}
