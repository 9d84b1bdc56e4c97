//! Transient per-VM state: what is true while a VM runs (its engine and
//! [`Handles`], what each capability made for this boot, the live agent
//! session). Held in memory and mirrored to the VM's `handles.json` scratch
//! file, so a restarted daemon can find (and adopt or tear down) what it
//! left running. Never in the store.
//!
//! The scratch file is read back as a claim, not a fact: [`read`] refuses
//! one whose pid could be no engine or whose sockets are not the ones its
//! engine makes in this VM's own runtime dir, the engine's `alive` checks
//! that the pid really runs it, and the network service refuses tap names
//! that are not banger's. A forged file gets nothing signalled or deleted.

use crate::agent::AgentConn;
use crate::capability;
use crate::engine::{Engines, Handles};
use crate::layout::VmDir;
use banger_api::EngineKind;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A running VM's transient state.
#[derive(Clone)]
pub struct Running {
    pub engine: EngineKind,
    pub handles: Handles,
    pub capabilities: capability::Runtime,
    pub agent: Option<Arc<AgentConn>>,
}

/// The scratch file's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Scratch {
    #[serde(default = "qemu")]
    engine: EngineKind,
    #[serde(flatten)]
    handles: Handles,
    #[serde(default)]
    capabilities: capability::Runtime,
    /// Written by daemons before capabilities kept their own state: the
    /// bridge tap.
    #[serde(default, skip_serializing)]
    tap: Option<String>,
}

fn qemu() -> EngineKind {
    EngineKind::Qemu
}

/// Writes the scratch file atomically (temp file + rename).
pub fn write(dir: &VmDir, r: &Running) -> std::io::Result<()> {
    let scratch = Scratch {
        engine: r.engine,
        handles: r.handles.clone(),
        capabilities: r.capabilities.clone(),
        tap: None,
    };
    let tmp = dir.file(".handles.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&scratch)?)?;
    std::fs::rename(tmp, dir.handles())
}

/// Reads the scratch file; a missing, corrupt or untrustworthy one (see
/// [`check`]) is `None`.
pub fn read(dir: &VmDir, engines: &Engines) -> Option<Running> {
    let mut s: Scratch = serde_json::from_slice(&std::fs::read(dir.handles()).ok()?).ok()?;
    if let Err(reason) = check(&s, dir, engines) {
        tracing::warn!(file = %dir.handles().display(), reason, "ignoring a scratch file");
        return None;
    }
    if let Some(tap) = s.tap.take() {
        s.capabilities
            .entry(capability::bridge::NAME.into())
            .or_insert_with(|| serde_json::json!({ "tap": tap }));
    }
    Some(Running {
        engine: s.engine,
        handles: s.handles,
        capabilities: s.capabilities,
        agent: None,
    })
}

/// Whether a scratch file can be this VM's: a pid that could be an engine
/// (not 0, not init, not this daemon) and exactly the sockets its engine
/// makes in the VM's runtime dir.
fn check(s: &Scratch, dir: &VmDir, engines: &Engines) -> Result<(), &'static str> {
    let h = &s.handles;
    if h.pid <= 1 || h.pid == banger_sys::process::own_pid() {
        return Err("its pid cannot be an engine");
    }
    let engine = engines
        .get(s.engine)
        .map_err(|_| "its engine is not available")?;
    let sockets = engine.sockets(&dir.run);
    if h.agent_socket != sockets.agent || h.control_socket != sockets.control {
        return Err("its sockets are not the ones of this vm's runtime dir");
    }
    Ok(())
}

pub fn remove(dir: &VmDir) {
    let _ = std::fs::remove_file(dir.handles());
}

/// Running VMs by name.
#[derive(Default)]
pub struct RuntimeCache {
    map: Mutex<HashMap<String, Running>>,
}

impl RuntimeCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Running> {
        self.lock().get(name).cloned()
    }

    pub fn insert(&self, name: &str, r: Running) {
        self.lock().insert(name.to_string(), r);
    }

    pub fn set_agent(&self, name: &str, agent: Arc<AgentConn>) {
        if let Some(r) = self.lock().get_mut(name) {
            r.agent = Some(agent);
        }
    }

    pub fn remove(&self, name: &str) -> Option<Running> {
        self.lock().remove(name)
    }

    /// The VM `from` runs on as `to` (a standby taken by a create).
    pub fn rename(&self, from: &str, to: &str) -> bool {
        let mut map = self.lock();
        match map.remove(from) {
            Some(r) => {
                map.insert(to.to_string(), r);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Accel;

    fn engines() -> Engines {
        Engines::new(Arc::new(crate::engine::fake::FakeEngine::new(
            EngineKind::Qemu,
        )))
    }

    fn sample(d: &VmDir) -> Running {
        Running {
            engine: EngineKind::Qemu,
            handles: Handles {
                pid: 42,
                accel: Accel::Tcg,
                agent_socket: d.run.join("agent.sock"),
                control_socket: d.run.join("control.sock"),
                started_at: 7,
            },
            capabilities: [(
                capability::bridge::NAME.to_string(),
                serde_json::json!({"tap": "bgtap1"}),
            )]
            .into(),
            agent: None,
        }
    }

    fn dir(root: &std::path::Path) -> VmDir {
        let d = VmDir::new(root, root, "abc");
        d.create().unwrap();
        d
    }

    #[test]
    fn scratch_file_round_trips() {
        let root = tempfile::tempdir().unwrap();
        let d = dir(root.path());
        write(&d, &sample(&d)).unwrap();
        let back = read(&d, &engines()).unwrap();
        let want = sample(&d);
        assert_eq!(
            (back.engine, back.handles, back.capabilities),
            (want.engine, want.handles, want.capabilities)
        );
        remove(&d);
        assert!(read(&d, &engines()).is_none());
    }

    /// `sample`'s scratch file with its handles changed by `forge`.
    fn forged(d: &VmDir, forge: impl FnOnce(&mut Handles)) -> Option<Running> {
        let mut r = sample(d);
        forge(&mut r.handles);
        write(d, &r).unwrap();
        read(d, &engines())
    }

    #[test]
    fn a_scratch_file_with_an_empty_control_socket_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let d = dir(root.path());
        assert!(forged(&d, |h| h.control_socket = "".into()).is_none());
    }

    #[test]
    fn a_scratch_file_naming_sockets_outside_its_vms_runtime_dir_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let d = dir(root.path());
        let other = VmDir::new(root.path(), root.path(), "other");
        assert!(forged(&d, |h| h.control_socket = other.run.join("control.sock")).is_none());
        assert!(forged(&d, |h| h.agent_socket = "/tmp/agent.sock".into()).is_none());
        assert!(
            forged(&d, |h| h.control_socket = d.run.join("qmp.sock")).is_none(),
            "not the name this engine gives it"
        );
    }

    #[test]
    fn a_scratch_file_whose_pid_cannot_be_an_engine_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let d = dir(root.path());
        assert!(forged(&d, |h| h.pid = 0).is_none());
        assert!(forged(&d, |h| h.pid = 1).is_none());
        assert!(forged(&d, |h| h.pid = std::process::id()).is_none());
    }

    #[test]
    fn a_scratch_file_of_an_engine_not_registered_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let d = dir(root.path());
        let mut r = sample(&d);
        r.engine = EngineKind::Firecracker;
        write(&d, &r).unwrap();
        assert!(read(&d, &engines()).is_none());
    }

    #[test]
    fn an_older_daemons_tap_becomes_the_bridge_capabilitys() {
        let root = tempfile::tempdir().unwrap();
        let d = dir(root.path());
        let old = serde_json::json!({
            "pid": 42, "accel": "tcg", "started_at": 7, "tap": "bgtap9",
            "agent_socket": d.run.join("agent.sock"),
            "control_socket": d.run.join("control.sock"),
        });
        std::fs::write(d.handles(), old.to_string()).unwrap();
        let r = read(&d, &engines()).unwrap();
        assert_eq!(r.engine, EngineKind::Qemu);
        assert_eq!(
            r.capabilities[capability::bridge::NAME],
            serde_json::json!({"tap": "bgtap9"})
        );
    }
}
