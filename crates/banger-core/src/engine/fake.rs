//! A fake engine for the lifecycle's unit tests: no VMM, no root. "Booting"
//! starts the real agent server (`banger_agent`) on one end of a socket
//! pair per connection, so the core's agent client, health check and clean
//! power-off run for real; a guest power-off makes the fake VM exit.
//! Failures can be injected at each step.

use super::accel::KvmStatus;
use super::snapshot::{RAM_FILE, STATE_FILE};
use super::{
    Accel, Drive, DriveFormat, Engine, EngineError, Handles, Layer, MachineSpec, RamMapping,
    SnapshotReport, Sockets, Switch,
};
use crate::layout::VmDir;
use banger_api::{Check, EngineKind};
use futures::future::BoxFuture;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixStream;

/// Where a fake engine can be told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeFault {
    RootDisk,
    Spawn,
    /// The engine starts, then exits before its agent answers.
    DieAtBoot,
    /// The guest ignores the clean power-off request.
    IgnorePowerOff,
    /// The engine runs, but its agent speaks another protocol version.
    OldAgent,
    /// A snapshot fails after the guest was paused.
    Snapshot,
    /// A restored engine exits while loading the snapshot.
    Restore,
    /// The next agent session answers the handshake, then nothing (as a
    /// guest that took the host's reconnect for a disconnect); once.
    DeafAgent,
}

#[derive(Default)]
struct State {
    next_pid: u32,
    alive: HashSet<u32>,
    faults: HashSet<FakeFault>,
    specs: Vec<MachineSpec>,
    /// Engines paused, or left paused by a snapshot that did not resume them.
    paused: HashSet<u32>,
    /// The snapshot directory each restore started from, in order.
    restored: Vec<(std::path::PathBuf, RamMapping)>,
}

pub struct FakeEngine {
    kind: EngineKind,
    state: Arc<Mutex<State>>,
}

struct Power {
    pid: u32,
    state: Arc<Mutex<State>>,
}

impl banger_agent::Power for Power {
    fn shutdown(&self, _reboot: bool) {
        let mut st = self.state.lock().unwrap();
        if !st.faults.contains(&FakeFault::IgnorePowerOff) {
            st.alive.remove(&self.pid);
        }
    }
}

impl FakeEngine {
    pub fn new(kind: EngineKind) -> FakeEngine {
        FakeEngine {
            kind,
            state: Arc::new(Mutex::new(State {
                next_pid: 1_000_000,
                ..State::default()
            })),
        }
    }

    pub fn fail(&self, fault: FakeFault) {
        self.state.lock().unwrap().faults.insert(fault);
    }

    pub fn heal(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Engines running now.
    pub fn running(&self) -> usize {
        self.state.lock().unwrap().alive.len()
    }

    /// The machine specs spawned so far.
    pub fn specs(&self) -> Vec<MachineSpec> {
        self.state.lock().unwrap().specs.clone()
    }

    /// Makes the engine of `pid` exit, as a guest `poweroff` or a crash would.
    pub fn crash(&self, pid: u32) {
        self.state.lock().unwrap().alive.remove(&pid);
    }

    /// Whether the engine of `pid` is paused (or a snapshot left it so).
    pub fn paused(&self, pid: u32) -> bool {
        self.state.lock().unwrap().paused.contains(&pid)
    }

    /// The snapshot directories restores started from.
    pub fn restored(&self) -> Vec<(std::path::PathBuf, RamMapping)> {
        self.state.lock().unwrap().restored.clone()
    }

    fn start(&self, spec: &MachineSpec) -> Result<Handles, EngineError> {
        if self.faulty(FakeFault::Spawn) {
            return Err(EngineError::EarlyExit {
                log: "injected spawn failure".into(),
            });
        }
        std::fs::create_dir_all(&spec.run_dir)?;
        let mut st = self.state.lock().unwrap();
        st.next_pid += 1;
        let pid = st.next_pid;
        if !st.faults.contains(&FakeFault::DieAtBoot) {
            st.alive.insert(pid);
        }
        st.specs.push(spec.clone());
        let sockets = self.sockets(&spec.run_dir);
        Ok(Handles {
            pid,
            accel: spec.accel,
            agent_socket: sockets.agent,
            control_socket: sockets.control,
            started_at: banger_sys::clock::unix_now(),
        })
    }

    fn faulty(&self, fault: FakeFault) -> bool {
        self.state.lock().unwrap().faults.contains(&fault)
    }
}

impl Engine for FakeEngine {
    fn kind(&self) -> EngineKind {
        self.kind
    }

    fn root_drive(&self, dir: &VmDir) -> Drive {
        Drive {
            path: dir.file("root.fake"),
            format: DriveFormat::Raw,
            serial: banger_proto::ROOT_DRIVE_SERIAL,
            read_only: false,
        }
    }

    fn create_root_disk(&self, _base: &Path, dir: &VmDir) -> Result<(), EngineError> {
        if self.faulty(FakeFault::RootDisk) {
            return Err(EngineError::Io(std::io::Error::other(
                "injected root disk failure",
            )));
        }
        std::fs::write(dir.file("root.fake"), b"root")?;
        Ok(())
    }

    fn accel<'a>(&'a self, _kernel: &'a Path) -> BoxFuture<'a, (Accel, KvmStatus)> {
        Box::pin(async { (Accel::Tcg, KvmStatus::Absent) })
    }

    fn accel_needs_probe(&self, _kernel: &Path) -> bool {
        false
    }

    fn sockets(&self, run_dir: &Path) -> Sockets {
        Sockets {
            agent: run_dir.join("agent.sock"),
            control: run_dir.join("control.sock"),
        }
    }

    fn spawn<'a>(&'a self, spec: &'a MachineSpec) -> BoxFuture<'a, Result<Handles, EngineError>> {
        Box::pin(async move { self.start(spec) })
    }

    /// A layer's file holds the path of what it is over, as QEMU's names it.
    fn create_layer(&self, base: &Layer, overlay: &Path) -> Result<(), EngineError> {
        std::fs::write(overlay, base.path.to_string_lossy().as_bytes())?;
        Ok(())
    }

    fn rebase_layer(&self, layer: &Layer, base: &Layer) -> Result<(), EngineError> {
        std::fs::write(&layer.path, base.path.to_string_lossy().as_bytes())?;
        Ok(())
    }

    fn copy_layer(
        &self,
        top: &Layer,
        _base: Option<&Layer>,
        dest: &Layer,
    ) -> Result<(), EngineError> {
        std::fs::copy(&top.path, &dest.path)?;
        Ok(())
    }

    fn snapshot<'a>(
        &'a self,
        handles: &'a Handles,
        dir: &'a Path,
        switch: &'a [Switch],
        resume: bool,
    ) -> BoxFuture<'a, Result<SnapshotReport, EngineError>> {
        Box::pin(async move {
            if !self.alive(handles) {
                return Err(EngineError::Control {
                    command: "stop".into(),
                    message: "not running".into(),
                });
            }
            if self.faulty(FakeFault::Snapshot) {
                return Err(EngineError::Control {
                    command: "migrate".into(),
                    message: "injected snapshot failure".into(),
                });
            }
            for s in switch {
                if !s.overlay.exists() {
                    return Err(EngineError::Control {
                        command: "blockdev-add".into(),
                        message: format!("{} does not exist", s.overlay.display()),
                    });
                }
            }
            std::fs::write(dir.join(STATE_FILE), b"devices")?;
            std::fs::write(dir.join(RAM_FILE), b"ram")?;
            if !resume {
                self.state.lock().unwrap().paused.insert(handles.pid);
            }
            Ok(SnapshotReport { paused_ms: 1 })
        })
    }

    fn pause<'a>(&'a self, handles: &'a Handles) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            self.state.lock().unwrap().paused.insert(handles.pid);
            Ok(())
        })
    }

    fn resume<'a>(&'a self, handles: &'a Handles) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            self.state.lock().unwrap().paused.remove(&handles.pid);
            Ok(())
        })
    }

    fn resume_interrupted<'a>(
        &'a self,
        handles: &'a Handles,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move { Ok(self.state.lock().unwrap().paused.remove(&handles.pid)) })
    }

    fn restore<'a>(
        &'a self,
        spec: &'a MachineSpec,
        from: &'a Path,
        ram: RamMapping,
    ) -> BoxFuture<'a, Result<Handles, EngineError>> {
        Box::pin(async move {
            if !from.join(STATE_FILE).exists() {
                return Err(EngineError::BadSnapshot {
                    dir: from.to_owned(),
                    problem: "no device state".into(),
                });
            }
            if self.faulty(FakeFault::Restore) {
                return Err(EngineError::EarlyExit {
                    log: "injected restore failure".into(),
                });
            }
            let handles = self.start(spec)?;
            self.state
                .lock()
                .unwrap()
                .restored
                .push((from.to_owned(), ram));
            Ok(handles)
        })
    }

    fn connect_agent<'a>(
        &'a self,
        handles: &'a Handles,
    ) -> BoxFuture<'a, Result<UnixStream, EngineError>> {
        Box::pin(async move {
            if !self.alive(handles) {
                return Err(EngineError::Connect {
                    path: handles.agent_socket.clone(),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                });
            }
            let (host, guest) = UnixStream::pair()?;
            if self.faulty(FakeFault::OldAgent) {
                tokio::spawn(answer_as_an_old_agent(guest));
                return Ok(host);
            }
            if self
                .state
                .lock()
                .unwrap()
                .faults
                .remove(&FakeFault::DeafAgent)
            {
                tokio::spawn(answer_then_go_deaf(guest));
                return Ok(host);
            }
            let power = Arc::new(Power {
                pid: handles.pid,
                state: self.state.clone(),
            });
            let agent = Arc::new(banger_agent::Agent::new(power));
            tokio::spawn(banger_agent::serve_connection(guest, agent));
            Ok(host)
        })
    }

    fn stop<'a>(
        &'a self,
        handles: &'a Handles,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            self.state.lock().unwrap().alive.remove(&handles.pid);
            Ok(())
        })
    }

    fn alive(&self, handles: &Handles) -> bool {
        self.state.lock().unwrap().alive.contains(&handles.pid)
    }

    fn wait_exit<'a>(&'a self, handles: &'a Handles) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            while self.alive(handles) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    }

    fn checks<'a>(&'a self, _kernel: Option<&'a Path>) -> BoxFuture<'a, Vec<Check>> {
        Box::pin(async { Vec::new() })
    }
}

/// Reads the host's sync line from `r` and answers it on `w` as an agent
/// speaking protocol `proto`.
async fn answer_sync<R>(r: &mut R, w: &mut tokio::net::unix::OwnedWriteHalf, proto: u32)
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut line = String::new();
    if r.read_line(&mut line).await.is_ok()
        && let Some(nonce) = banger_proto::parse_sync(line.trim_end())
    {
        let _ = w
            .write_all(banger_proto::ready_line(nonce, proto).as_bytes())
            .await;
    }
}

/// Answers the sync line, then reads and says nothing until the host hangs up.
async fn answer_then_go_deaf(guest: UnixStream) {
    use tokio::io::AsyncReadExt;
    let (r, mut w) = guest.into_split();
    let mut r = tokio::io::BufReader::new(r);
    answer_sync(&mut r, &mut w, banger_proto::PROTOCOL_VERSION).await;
    let _ = r.read_to_end(&mut Vec::new()).await;
}

/// Answers the sync line with a protocol version from the future.
async fn answer_as_an_old_agent(guest: UnixStream) {
    let (r, mut w) = guest.into_split();
    let mut r = tokio::io::BufReader::new(r);
    answer_sync(&mut r, &mut w, banger_proto::PROTOCOL_VERSION + 1).await;
}
