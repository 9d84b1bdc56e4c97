//! Transient per-VM state: what is true while a VM runs (its engine and
//! [`Handles`], what each capability made for this boot, the live agent
//! session). Held in memory and mirrored to the VM's `handles.json` scratch
//! file, so a restarted daemon can find (and adopt or tear down) what it
//! left running. Never in the store.

use crate::agent::AgentConn;
use crate::capability;
use crate::engine::Handles;
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

/// Reads the scratch file; a missing or corrupt file is `None`.
pub fn read(dir: &VmDir) -> Option<Running> {
    let mut s: Scratch = serde_json::from_slice(&std::fs::read(dir.handles()).ok()?).ok()?;
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

    fn sample() -> Running {
        Running {
            engine: EngineKind::Qemu,
            handles: Handles {
                pid: 42,
                accel: Accel::Tcg,
                agent_socket: "/r/agent.sock".into(),
                control_socket: "/r/qmp.sock".into(),
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
        write(&d, &sample()).unwrap();
        let back = read(&d).unwrap();
        assert_eq!(
            (back.engine, back.handles, back.capabilities),
            (sample().engine, sample().handles, sample().capabilities)
        );
        remove(&d);
        assert!(read(&d).is_none());
    }

    #[test]
    fn an_older_daemons_tap_becomes_the_bridge_capabilitys() {
        let root = tempfile::tempdir().unwrap();
        let d = dir(root.path());
        std::fs::write(
            d.handles(),
            r#"{"pid":42,"accel":"tcg","agent_socket":"/a","control_socket":"/q","started_at":7,"tap":"bgtap9"}"#,
        )
        .unwrap();
        let r = read(&d).unwrap();
        assert_eq!(r.engine, EngineKind::Qemu);
        assert_eq!(
            r.capabilities[capability::bridge::NAME],
            serde_json::json!({"tap": "bgtap9"})
        );
    }
}
