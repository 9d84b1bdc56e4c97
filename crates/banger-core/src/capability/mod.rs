//! Capabilities: host-side features plugged into the VM lifecycle. The VM
//! code runs the [`Pipeline`] (the list in [`standard`]) and knows nothing
//! of the features themselves.
//!
//! A capability may, for the VMs it [`Capability::applies`] to:
//!
//! 1. `plan`: check a create request and fill its part of the VM's record
//!    (request time: nothing is made yet, so a refusal leaves nothing);
//! 2. `create`: make durable per-VM resources (a work disk, an address
//!    lease), undone by `destroy` on delete and on a failed create;
//! 3. `prepare`: before each boot, make host resources (a tap, a DNS name)
//!    and contribute drives, NICs and guest config to the [`BootPlan`];
//!    what it must remember to undo them goes into the plan's `runtime`
//!    (kept in the VM's `handles.json`), undone by `release` on stop, on a
//!    failed boot and on delete;
//! 4. `restored`: once the agent of a guest restored from a snapshot
//!    answers (before every `ready`), with this boot's guest config: the
//!    guest still has the snapshot's state, not this boot's;
//! 5. `ready`: act once the guest agent answers;
//! 6. `sweep`: at daemon start, remove its leftovers that no live VM owns;
//! 7. `rename`: a running VM takes another name (a standby taken by a
//!    create, `vm/standby.rs`): move what `prepare` keyed by the old name,
//!    and bring its part of the guest config up to date for the identity
//!    the guest gets next (`restored`).
//!
//! The lifecycle runs each step with an undo stack ([`crate::vm::undo`]):
//! every hook that succeeded pushes its undo, and a failure anywhere runs
//! the stack in reverse, so exactly what was done is undone.
//!
//! Adding a capability: one file here implementing [`Capability`], one line
//! in [`standard`].

pub mod bridge;
pub mod egress;
pub mod file_sync;
pub mod git_identity;
pub mod identity;
pub mod ssh_keys;
pub mod user_net;
pub mod work_disk;

use crate::agent::AgentConn;
use crate::engine::{Drive, Nic};
use crate::error::Error;
use crate::layout::VmDir;
use crate::store::{ImageRecord, VmRecord};
use banger_api::CreateVm;
use banger_proto::GuestConfig;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a capability's hooks see of the VM being created or booted.
pub struct Ctx<'a> {
    pub vm: &'a VmRecord,
    pub image: &'a ImageRecord,
    pub dir: &'a VmDir,
}

/// One boot's machine and guest config, as capabilities contribute to it.
#[derive(Debug, Clone, PartialEq)]
pub struct BootPlan {
    /// Drives after the root disk (the config drive goes last).
    pub drives: Vec<Drive>,
    pub nics: Vec<Nic>,
    pub guest: GuestConfig,
    /// This boot resumes a snapshot: the guest, already running, reads no
    /// config drive (the identity request carries what must change).
    pub restore: bool,
    /// What each capability must remember to release this boot's
    /// resources, by capability name; kept in `handles.json`.
    pub runtime: Runtime,
}

/// Capability name → its transient state of one boot.
pub type Runtime = BTreeMap<String, serde_json::Value>;

/// A running VM as `sweep` sees it.
pub struct Live<'a> {
    pub vm: &'a VmRecord,
    pub runtime: &'a Runtime,
}

fn ok<'a>() -> BoxFuture<'a, Result<(), Error>> {
    Box::pin(async { Ok(()) })
}

pub trait Capability: Send + Sync {
    /// Short name: for logs, and its key in [`BootPlan::runtime`].
    fn name(&self) -> &'static str;

    /// Whether it has anything to do for `vm`.
    fn applies(&self, _vm: &VmRecord) -> bool {
        true
    }

    /// Checks `req` and fills this capability's part of `vm` (every
    /// capability sees every request, so it can refuse options that are not
    /// its VM's).
    fn plan(&self, _req: &CreateVm, _vm: &mut VmRecord) -> Result<(), Error> {
        Ok(())
    }

    /// Makes durable per-VM resources.
    fn create<'a>(&'a self, _ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), Error>> {
        ok()
    }

    /// Removes what `create` made; must be idempotent.
    fn destroy(&self, _vm: &VmRecord, _dir: &VmDir) {}

    /// Makes this boot's host resources and contributes to `plan`.
    fn prepare<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        _plan: &'a mut BootPlan,
    ) -> BoxFuture<'a, Result<(), Error>> {
        ok()
    }

    /// Releases what `prepare` made, from what it left in the runtime (or
    /// `None` when nothing was recorded); must be idempotent.
    fn release(&self, _vm: &VmRecord, _runtime: Option<&serde_json::Value>) {}

    /// Acts once the agent of a guest restored from a snapshot answers,
    /// before any `ready`; `guest` is the config this boot gave the guest
    /// (the guest, resumed, never read it).
    fn restored<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        _guest: &'a GuestConfig,
        _agent: &'a AgentConn,
    ) -> BoxFuture<'a, Result<(), Error>> {
        ok()
    }

    /// Acts once the guest agent answers.
    fn ready<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        _agent: &'a AgentConn,
    ) -> BoxFuture<'a, Result<(), Error>> {
        ok()
    }

    /// At daemon start: removes leftovers no live VM owns.
    fn sweep(&self, _live: &[Live<'_>]) {}

    /// The running VM `old` is now `ctx.vm`: moves what `prepare` keyed by
    /// the old name and refreshes its part of `guest`.
    fn rename<'a>(
        &'a self,
        _ctx: &'a Ctx<'a>,
        _old: &'a str,
        _guest: &'a mut GuestConfig,
    ) -> BoxFuture<'a, Result<(), Error>> {
        ok()
    }
}

/// The capabilities of this daemon, in the order they run (and the reverse
/// of the order they are undone).
#[derive(Clone)]
pub struct Pipeline {
    caps: Vec<Arc<dyn Capability>>,
}

impl Pipeline {
    pub fn new(caps: Vec<Arc<dyn Capability>>) -> Pipeline {
        Pipeline { caps }
    }

    /// The capabilities that apply to `vm`, in order.
    pub fn for_vm<'a>(&'a self, vm: &'a VmRecord) -> impl Iterator<Item = &'a Arc<dyn Capability>> {
        self.caps.iter().filter(move |c| c.applies(vm))
    }

    pub fn plan(&self, req: &CreateVm, vm: &mut VmRecord) -> Result<(), Error> {
        for cap in &self.caps {
            cap.plan(req, vm)?;
        }
        Ok(())
    }

    /// Releases every capability's boot resources, in reverse order.
    pub fn release(&self, vm: &VmRecord, runtime: &Runtime) {
        for cap in self.for_vm(vm).collect::<Vec<_>>().into_iter().rev() {
            cap.release(vm, runtime.get(cap.name()));
        }
    }

    /// Destroys every capability's durable resources, in reverse order.
    pub fn destroy(&self, vm: &VmRecord, dir: &VmDir) {
        for cap in self.for_vm(vm).collect::<Vec<_>>().into_iter().rev() {
            cap.destroy(vm, dir);
        }
    }

    pub fn sweep(&self, live: &[Live<'_>]) {
        for cap in &self.caps {
            cap.sweep(live);
        }
    }
}

/// What the standard capabilities need from the daemon.
pub struct Deps {
    pub config: Arc<crate::config::Config>,
    pub paths: banger_api::paths::Paths,
    pub runner: Arc<dyn banger_sys::command::Runner>,
    pub network: Arc<crate::net::Network>,
    /// The daemon user's home: `~/` of file sync, the global git config.
    pub home: std::path::PathBuf,
    /// Starts the helper processes a boot needs (user mode's passt).
    pub spawner: Arc<dyn banger_sys::spawn::Spawner>,
    /// passt's program (looked up in `PATH` at each boot); `None`: user
    /// mode always uses QEMU's slirp.
    pub passt_bin: Option<std::path::PathBuf>,
}

/// The daemon's capabilities, in order. Add a line here for a new one.
pub fn standard(deps: &Deps) -> Pipeline {
    Pipeline::new(vec![
        Arc::new(egress::EgressPolicy),
        Arc::new(identity::Identity::new(
            deps.runner.clone(),
            deps.paths.runtime_dir.join("host-keys"),
        )),
        Arc::new(work_disk::WorkDisk::new(deps.runner.clone())),
        Arc::new(ssh_keys::SshKeys::new(
            deps.runner.clone(),
            deps.paths.state_dir.clone(),
            deps.config.ssh_key.clone(),
        )),
        Arc::new(bridge::BridgeNet::new(deps.network.clone())),
        Arc::new(user_net::UserNet::new(
            deps.config.egress,
            deps.spawner.clone(),
            deps.passt_bin.clone(),
            &deps.paths,
        )),
        Arc::new(git_identity::GitIdentity::new(
            deps.runner.clone(),
            deps.home.clone(),
        )),
        Arc::new(file_sync::FileSync::new(
            deps.config.file_sync.clone(),
            deps.home.clone(),
        )),
    ])
}
