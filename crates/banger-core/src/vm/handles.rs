//! Transient per-VM state: the engine [`Handles`] of each running VM, held
//! in memory with the live agent session and mirrored to the VM's
//! `handles.json` scratch file so a restarted daemon can find (and adopt or
//! tear down) what it left running.

use crate::agent::AgentConn;
use crate::engine::Handles;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const HANDLES_FILE: &str = "handles.json";

pub fn handles_path(vm_dir: &Path) -> PathBuf {
    vm_dir.join(HANDLES_FILE)
}

/// Writes the scratch file atomically (temp file + rename).
pub fn write(vm_dir: &Path, h: &Handles) -> std::io::Result<()> {
    let tmp = vm_dir.join(".handles.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(h)?)?;
    std::fs::rename(tmp, handles_path(vm_dir))
}

/// Reads the scratch file; a missing or corrupt file is `None`.
pub fn read(vm_dir: &Path) -> Option<Handles> {
    serde_json::from_slice(&std::fs::read(handles_path(vm_dir)).ok()?).ok()
}

pub fn remove(vm_dir: &Path) {
    let _ = std::fs::remove_file(handles_path(vm_dir));
}

#[derive(Clone)]
pub struct Runtime {
    pub handles: Handles,
    pub agent: Option<Arc<AgentConn>>,
}

/// In-memory cache of runtimes by VM name.
#[derive(Default)]
pub struct HandleCache {
    map: Mutex<HashMap<String, Runtime>>,
}

impl HandleCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Runtime>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Runtime> {
        self.lock().get(name).cloned()
    }

    pub fn insert(&self, name: &str, rt: Runtime) {
        self.lock().insert(name.to_string(), rt);
    }

    pub fn set_agent(&self, name: &str, agent: Arc<AgentConn>) {
        if let Some(rt) = self.lock().get_mut(name) {
            rt.agent = Some(agent);
        }
    }

    pub fn remove(&self, name: &str) -> Option<Runtime> {
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

    fn sample() -> Handles {
        Handles {
            pid: 42,
            accel: Accel::Tcg,
            agent_socket: "/r/agent.sock".into(),
            control_socket: "/r/qmp.sock".into(),
            started_at: 7,
            tap: None,
        }
    }

    #[test]
    fn scratch_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &sample()).unwrap();
        assert_eq!(read(dir.path()), Some(sample()));
        remove(dir.path());
        assert_eq!(read(dir.path()), None);
    }

    #[test]
    fn corrupt_scratch_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(handles_path(dir.path()), b"{not json").unwrap();
        assert_eq!(read(dir.path()), None);
    }

    #[test]
    fn cache_holds_runtimes_by_name() {
        let c = HandleCache::default();
        c.insert(
            "web",
            Runtime {
                handles: sample(),
                agent: None,
            },
        );
        assert_eq!(c.get("web").unwrap().handles.pid, 42);
        assert_eq!(c.len(), 1);
        assert!(c.remove("web").is_some() && c.is_empty());
    }
}
