//! The lifecycle service: the API bangerd's VM handlers call (list, show,
//! create, start, stop, restart, delete, the agent of a running VM, its
//! console, ssh) and the state those operations share: the per-VM locks,
//! the runtime cache, the engines and the capability pipeline. Its fields
//! are private; each operation lives in its own file beside this one.
//!
//! Reads never change state. A VM recorded as running whose engine is gone
//! is shown as stopped and handed to the [`super::monitor`], which takes the
//! VM's lock and records the change.

use super::monitor::Exited;
use super::runtime::{self, Running, RuntimeCache};
use crate::agent::AgentConn;
use crate::capability::Pipeline;
use crate::config::Config;
use crate::engine::{Engine, Engines};
use crate::error::{Action, Error};
use crate::images::Images;
use crate::layout::VmDir;
use crate::net::Network;
use crate::ops::Operations;
use crate::store::{Store, VmRecord};
use banger_api::paths::Paths;
use banger_api::{NetworkMode, Vm, VmState};
use banger_sys::command::Runner;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long an agent session may take to answer a request's first frame
/// before it is taken for dead (a healthy one answers in milliseconds).
pub const FIRST_ANSWER: Duration = Duration::from_secs(10);

/// What the lifecycle is built from.
pub struct LifecycleDeps {
    pub config: Arc<Config>,
    pub paths: Paths,
    pub store: Arc<Store>,
    pub engines: Engines,
    pub capabilities: Pipeline,
    pub images: Arc<Images>,
    pub ops: Arc<Operations>,
    pub network: Arc<Network>,
    pub runner: Arc<dyn Runner>,
}

pub struct Lifecycle {
    pub(super) config: Arc<Config>,
    pub(super) paths: Paths,
    pub(super) store: Arc<Store>,
    pub(super) engines: Engines,
    pub(super) capabilities: Pipeline,
    pub(super) images: Arc<Images>,
    pub(super) ops: Arc<Operations>,
    pub(super) network: Arc<Network>,
    pub(super) runner: Arc<dyn Runner>,
    pub(super) runtime: RuntimeCache,
    pub(super) held: Arc<super::pause::Held>,
    pub(super) standbys: super::standby::Standbys,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(super) exits: mpsc::UnboundedSender<Exited>,
}

impl Lifecycle {
    /// Builds the service and starts its monitor (needs a tokio runtime).
    pub fn new(deps: LifecycleDeps) -> Arc<Lifecycle> {
        let (exits, rx) = mpsc::unbounded_channel();
        let this = Arc::new(Lifecycle {
            config: deps.config,
            paths: deps.paths,
            store: deps.store,
            engines: deps.engines,
            capabilities: deps.capabilities,
            images: deps.images,
            ops: deps.ops,
            network: deps.network,
            runner: deps.runner,
            runtime: RuntimeCache::default(),
            held: Arc::default(),
            standbys: Default::default(),
            locks: Mutex::new(HashMap::new()),
            exits,
        });
        super::monitor::start(Arc::downgrade(&this), rx);
        this
    }

    /// The lock serialising lifecycle operations on one VM.
    pub(super) fn lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub(super) fn record(&self, name: &str) -> Result<VmRecord, Error> {
        self.store
            .vm(name)?
            .ok_or_else(|| Error::VmNotFound { name: name.into() })
    }

    pub(super) fn dir(&self, vm: &VmRecord) -> VmDir {
        VmDir {
            state: PathBuf::from(&vm.dir),
            run: self.paths.runtime_dir.join("vms").join(&vm.id),
        }
    }

    pub(super) fn engine(&self, vm: &VmRecord) -> Result<Arc<dyn Engine>, Error> {
        self.engines.get(vm.engine)
    }

    /// What tells this boot of a running VM from its others: its engine's
    /// start time. `None` when it does not run.
    pub fn boot_id(&self, name: &str) -> Option<i64> {
        self.runtime.get(name).map(|r| r.handles.started_at)
    }

    /// Running VMs (as far as this daemon knows).
    pub fn running_count(&self) -> usize {
        self.runtime.len()
    }

    /// The VMs users made (standbys are the daemon's own).
    pub fn list(&self) -> Result<Vec<Vm>, Error> {
        Ok(self
            .store
            .vms()?
            .into_iter()
            .filter(|v| !Lifecycle::is_standby(v))
            .map(|v| self.view(v))
            .collect())
    }

    pub fn show(&self, name: &str) -> Result<Vm, Error> {
        Ok(self.view(self.record(name)?))
    }

    /// The state a user should see: a VM recorded as running whose engine
    /// is gone is stopped (and the monitor is told, to record it); one
    /// whose engine holds the guest after a disk error is paused.
    fn observed_state(&self, vm: &VmRecord, running: Option<&Running>) -> VmState {
        if vm.state != VmState::Running {
            return vm.state;
        }
        let alive = running.is_some_and(|r| {
            self.engines
                .get(r.engine)
                .is_ok_and(|e| e.alive(&r.handles))
        });
        if alive {
            let held = running.is_some_and(|r| self.held.get(&vm.id, r.handles.pid).is_some());
            return if held {
                VmState::Paused
            } else {
                VmState::Running
            };
        }
        self.report_exit(&vm.id, running.map(|r| r.handles.pid));
        VmState::Stopped
    }

    /// Tells the monitor that the engine of VM `id` (pid, when known) is gone.
    pub(super) fn report_exit(&self, id: &str, pid: Option<u32>) {
        let _ = self.exits.send(Exited {
            id: id.to_string(),
            pid,
        });
    }

    /// The name VM `id` has now.
    pub(super) fn name_of(&self, id: &str) -> Option<String> {
        self.store
            .vms()
            .ok()?
            .into_iter()
            .find(|v| v.id == id)
            .map(|v| v.name)
    }

    fn view(&self, vm: VmRecord) -> Vm {
        let egress = crate::capability::egress::Egress::of(&vm);
        let running = self.runtime.get(&vm.name);
        let state = self.observed_state(&vm, running.as_ref());
        let running = running.filter(|_| matches!(state, VmState::Running | VmState::Paused));
        let paused = running
            .as_ref()
            .and_then(|r| self.held.get(&vm.id, r.handles.pid))
            .map(|why| why.describe().to_string());
        Vm {
            paused,
            dns_name: (vm.network == NetworkMode::Bridge).then(|| self.network.dns_name(&vm.name)),
            id: vm.id,
            name: vm.name,
            state,
            image: vm.image,
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            disk_size_mib: vm.disk_size_mib,
            created_at: vm.created_at,
            accel: running
                .as_ref()
                .map(|r| r.handles.accel.as_str().to_string()),
            pid: running.as_ref().map(|r| r.handles.pid),
            last_error: vm.last_error,
            dir: vm.dir,
            network: vm.network,
            engine: vm.engine,
            ip: vm.ip,
            ports: vm.publish,
            allow: egress.describe(),
            host_access: egress.host_access,
        }
    }

    /// The guest's serial console log.
    pub fn console_log(&self, name: &str) -> Result<PathBuf, Error> {
        let vm = self.record(name)?;
        Ok(self.engine(&vm)?.console_log(&self.dir(&vm)))
    }

    /// The live agent session of a running VM, reconnecting when needed
    /// (after a daemon restart, or when the old session broke).
    pub async fn agent(&self, name: &str) -> Result<Arc<AgentConn>, Error> {
        let vm = self.record(name)?;
        let running = self.runtime.get(name);
        let state = self.observed_state(&vm, running.as_ref());
        if let Some(why) = self.held(&vm).filter(|_| state == VmState::Paused) {
            return Err(self.paused_error(&vm, why));
        }
        let (VmState::Running, Some(running)) = (state, running) else {
            return Err(Error::WrongState {
                name: name.into(),
                state,
                action: Action::Use,
            });
        };
        if let Some(a) = running.agent.filter(|a| !a.is_closed()) {
            return Ok(a);
        }
        let engine = self.engines.get(running.engine)?;
        let secs = 10;
        let conn = tokio::time::timeout(Duration::from_secs(secs), async {
            let io = engine.connect_agent(&running.handles).await?;
            Ok::<_, Error>(AgentConn::handshake(io).await?)
        })
        .await
        .map_err(|_| Error::AgentUnreachable {
            name: name.into(),
            secs,
            console: self.console_tail(&vm, &*engine, 10),
        })??;
        let conn = Arc::new(conn);
        self.runtime.set_agent(name, conn.clone());
        Ok(conn)
    }

    /// Sends `request` to `name`'s agent and reads its first answer (an
    /// exec's `Started`, a session's `Response`: the agent sends it at
    /// once). A session that says nothing for [`FIRST_ANSWER`] is dead to
    /// us: a guest that saw the host go and come back in one moment can
    /// be left waiting for a host it already has, and the request with it,
    /// forever. It is dropped, and the request sent once more on a fresh
    /// session (the agent never began it: it answers before anything else).
    pub async fn agent_request(
        &self,
        name: &str,
        request: banger_proto::Request,
    ) -> Result<(crate::agent::AgentStream, banger_proto::Frame), Error> {
        for _ in 0..2 {
            let agent = self.agent(name).await?;
            let mut s = agent.request(request.clone()).await?;
            match tokio::time::timeout(FIRST_ANSWER, banger_proto::read_frame(&mut s)).await {
                Ok(Ok(Some(frame))) => return Ok((s, frame)),
                answer => {
                    tracing::warn!(
                        vm = name,
                        ?answer,
                        "the agent session did not answer; connecting afresh"
                    );
                    agent.mark_closed();
                }
            }
        }
        let vm = self.record(name)?;
        let engine = self
            .engines
            .get(self.runtime.get(name).map_or(vm.engine, |r| r.engine))?;
        Err(Error::AgentUnreachable {
            name: name.into(),
            secs: FIRST_ANSWER.as_secs(),
            console: self.console_tail(&vm, &*engine, 10),
        })
    }

    /// Records `running` for `vm` (memory and scratch file) and watches its
    /// engine for exit.
    pub(super) fn remember(&self, vm: &VmRecord, running: Running) -> Result<(), Error> {
        let dir = self.dir(vm);
        runtime::write(&dir, &running).map_err(Error::io(format!(
            "cannot write {}",
            dir.handles().display()
        )))?;
        self.watch(vm, &running);
        self.runtime.insert(&vm.name, running);
        Ok(())
    }

    /// Hands the engine's exit to the monitor when it happens, keeping the
    /// console under its cap until then.
    pub(super) fn watch(&self, vm: &VmRecord, running: &Running) {
        let Ok(engine) = self.engines.get(running.engine) else {
            return;
        };
        self.follow_pause(vm, engine.clone(), running.handles.clone());
        let (handles, exits) = (running.handles.clone(), self.exits.clone());
        let id = vm.id.clone();
        let console = engine.console_log(&self.dir(vm));
        tokio::spawn(async move {
            tokio::select! {
                () = engine.wait_exit(&handles) => {}
                () = crate::console::keep_capped(console) => {}
            }
            let _ = exits.send(Exited {
                id,
                pid: Some(handles.pid),
            });
        });
    }

    /// Forgets a VM's transient state and releases what its capabilities
    /// made for the boot: memory, scratch file, socket dir, taps, names.
    pub(super) fn release_runtime(&self, vm: &VmRecord) {
        let dir = self.dir(vm);
        let running = self
            .runtime
            .remove(&vm.name)
            .or_else(|| runtime::read(&dir, &self.engines));
        let caps = running.map(|r| r.capabilities).unwrap_or_default();
        self.capabilities.release(vm, &caps);
        runtime::remove(&dir);
        if let Err(e) = crate::layout::remove_dir_if_present(&dir.run) {
            tracing::warn!(vm = %vm.name, error = %e, "cannot remove the socket dir");
        }
    }

    /// Stops an engine without ceremony.
    pub(super) async fn kill_engine(
        &self,
        vm: &VmRecord,
        engine: &dyn Engine,
        h: &crate::engine::Handles,
    ) {
        if let Err(e) = engine.stop(h, Duration::from_millis(500)).await {
            tracing::warn!(vm = %vm.name, error = %crate::error::chain(&e), "cannot stop engine");
        }
    }

    /// The last console lines of a VM, for errors about a guest that did not come up.
    pub(super) fn console_tail(&self, vm: &VmRecord, engine: &dyn Engine, n: usize) -> String {
        crate::layout::tail(&engine.console_log(&self.dir(vm)), n)
    }
}
