//! The daemon's core state and the entry points its HTTP handlers call:
//! store, config, engine, transient handles, operations and per-VM locks.
//! Each lifecycle operation lives in its own file under `vm/`; this file
//! holds only what they share (lookups, locks, agent sessions, the machine
//! spec of a VM).

use crate::agent::AgentConn;
use crate::config::Config;
use crate::engine::{Accel, Drive, DriveFormat, Engine, Handles, MachineSpec, accel};
use crate::error::Error;
use crate::ops::OpRegistry;
use crate::store::{ImageRecord, Store, VmRecord};
use crate::vm::handles::{self, HandleCache, Runtime};
use banger_api::paths::Paths;
use banger_api::{Vm, VmState};
use banger_sys::command::Runner;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Manager {
    pub paths: Paths,
    pub config: Config,
    pub store: Store,
    pub engine: Arc<dyn Engine>,
    pub runner: Arc<dyn Runner>,
    pub ops: OpRegistry,
    pub handles: HandleCache,
    /// Idle bridge-mode taps.
    pub(crate) bridge: crate::net::bridge::TapPool,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The accelerator decision, made once per daemon.
    accel: tokio::sync::Mutex<Option<(Accel, accel::KvmStatus)>>,
    pub started_at: i64,
}

impl Manager {
    pub fn new(
        paths: Paths,
        config: Config,
        store: Store,
        engine: Arc<dyn Engine>,
        runner: Arc<dyn Runner>,
    ) -> Manager {
        Manager {
            paths,
            config,
            store,
            engine,
            runner,
            ops: OpRegistry::default(),
            handles: HandleCache::default(),
            bridge: Default::default(),
            locks: Mutex::new(HashMap::new()),
            accel: tokio::sync::Mutex::new(None),
            started_at: banger_sys::clock::unix_now(),
        }
    }

    /// The lock serialising lifecycle operations on one VM.
    pub fn vm_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub fn vm_record(&self, name: &str) -> Result<VmRecord, Error> {
        self.store
            .vm(name)?
            .ok_or_else(|| Error::NotFound(format!("no vm named {name:?}: see `banger vm list`")))
    }

    pub fn image_record(&self, name: &str) -> Result<ImageRecord, Error> {
        self.store
            .image(name)?
            .ok_or_else(|| Error::NotFound(format!("no image named {name:?}: see `banger image list`, or build it with `banger image build`")))
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.paths.state_dir.join("vms")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.paths.state_dir.join("images")
    }

    /// Where a VM's sockets live (kept short for the 108-byte socket limit).
    pub fn run_dir(&self, vm: &VmRecord) -> PathBuf {
        self.paths.runtime_dir.join("vms").join(&vm.id)
    }

    /// A VM as the API shows it. A VM recorded as running whose engine is
    /// gone is shown (and recorded) as stopped.
    pub fn view(&self, vm: VmRecord) -> Vm {
        let vm = self.refresh(vm);
        let rt = self.handles.get(&vm.name);
        let name = vm.name.clone();
        Vm {
            id: vm.id,
            name: vm.name,
            state: vm.state,
            image: vm.image,
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            disk_size_mib: vm.disk_size_mib,
            created_at: vm.created_at,
            accel: rt.as_ref().map(|r| r.handles.accel.as_str().to_string()),
            pid: rt.as_ref().map(|r| r.handles.pid),
            last_error: vm.last_error,
            dir: vm.dir,
            dns_name: (vm.network == "bridge")
                .then(|| format!("{name}.{}", self.config.dns_suffix)),
            network: vm.network,
            ip: vm.ip,
            ports: vm.publish,
        }
    }

    /// The network mode of a VM created without `--network`.
    pub fn default_network(&self) -> crate::net::Mode {
        use crate::config::NetworkChoice;
        match self.config.network {
            NetworkChoice::Auto => crate::net::Mode::auto(banger_sys::process::euid() == 0),
            NetworkChoice::Bridge => crate::net::Mode::Bridge,
            NetworkChoice::User => crate::net::Mode::User,
            NetworkChoice::None => crate::net::Mode::None,
        }
    }

    /// The guest's network config for the config drive.
    pub fn guest_network(&self, vm: &VmRecord) -> Option<banger_proto::GuestNetwork> {
        let mac = vm.mac.clone()?;
        match vm.network.as_str() {
            "user" => Some(banger_proto::GuestNetwork {
                mac,
                address: crate::net::user::ADDRESS.into(),
                gateway: Some(crate::net::user::GATEWAY.into()),
                dns: vec![crate::net::user::DNS.into()],
                search: None,
            }),
            "bridge" => {
                let subnet = crate::net::Subnet::parse(&self.config.bridge_subnet).ok()?;
                let ip: std::net::Ipv4Addr = vm.ip.as_deref()?.parse().ok()?;
                Some(banger_proto::GuestNetwork {
                    mac,
                    address: subnet.with_prefix(ip),
                    gateway: Some(subnet.gateway().to_string()),
                    dns: vec![subnet.gateway().to_string()],
                    search: Some(self.config.dns_suffix.clone()),
                })
            }
            _ => None,
        }
    }

    /// The single liveness rule: running means the engine process that
    /// `handles` names is alive. A dead one is torn down and recorded stopped.
    pub fn refresh(&self, mut vm: VmRecord) -> VmRecord {
        if vm.state != VmState::Running {
            return vm;
        }
        let alive = self
            .handles
            .get(&vm.name)
            .is_some_and(|rt| self.engine.alive(&rt.handles));
        if !alive {
            tracing::info!(vm = %vm.name, "engine is gone; recording the vm as stopped");
            self.release_runtime(&vm);
            if self
                .store
                .set_vm_state(&vm.name, VmState::Stopped, vm.last_error.as_deref())
                .is_ok()
            {
                vm.state = VmState::Stopped;
            }
        }
        vm
    }

    /// Forgets a VM's transient state: memory, scratch file, socket dir.
    pub fn release_runtime(&self, vm: &VmRecord) {
        let rt = self.handles.remove(&vm.name);
        let tap = rt
            .and_then(|rt| rt.handles.tap)
            .or_else(|| handles::read(Path::new(&vm.dir)).and_then(|h| h.tap));
        self.release_tap(vm, tap);
        handles::remove(Path::new(&vm.dir));
        let _ = std::fs::remove_dir_all(self.run_dir(vm));
    }

    pub fn remember_runtime(
        &self,
        vm: &VmRecord,
        h: &Handles,
        agent: Option<Arc<AgentConn>>,
    ) -> Result<(), Error> {
        handles::write(Path::new(&vm.dir), h)
            .map_err(Error::io(format!("cannot write {}/handles.json", vm.dir)))?;
        self.handles.insert(
            &vm.name,
            Runtime {
                handles: h.clone(),
                agent,
            },
        );
        Ok(())
    }

    /// The live agent session of a running VM, reconnecting when needed
    /// (after a daemon restart, or when the old session broke).
    pub async fn agent(&self, name: &str) -> Result<Arc<AgentConn>, Error> {
        let vm = self.refresh(self.vm_record(name)?);
        if vm.state != VmState::Running {
            return Err(Error::Conflict(format!(
                "vm {name:?} is {}: start it with `banger vm start {name}`",
                vm.state
            )));
        }
        let rt = self
            .handles
            .get(name)
            .ok_or_else(|| Error::Conflict(format!("vm {name:?} has no running engine")))?;
        if let Some(a) = rt.agent.filter(|a| !a.is_closed()) {
            return Ok(a);
        }
        let conn = tokio::time::timeout(Duration::from_secs(10), async {
            let io = self.engine.connect_agent(&rt.handles).await?;
            Ok::<_, Error>(AgentConn::handshake(io).await?)
        })
        .await
        .map_err(|_| {
            Error::failed(format!(
                "the guest agent of {name:?} did not answer within 10 s"
            ))
        })??;
        let conn = Arc::new(conn);
        self.handles.set_agent(name, conn.clone());
        Ok(conn)
    }

    /// Decides KVM or TCG once per daemon (probing when `auto` needs to).
    pub async fn accel(&self, kernel: &Path) -> (Accel, accel::KvmStatus) {
        let mut slot = self.accel.lock().await;
        if let Some(d) = slot.clone() {
            return d;
        }
        let d = accel::decide(
            self.config.accel,
            &self.config.qemu_bin,
            kernel,
            &accel::cache_file(&self.paths.cache_dir),
        )
        .await;
        tracing::info!(accel = d.0.as_str(), kvm = ?d.1, "accelerator chosen");
        *slot = Some(d.clone());
        d
    }

    /// Whether deciding the accelerator would need a probe boot now.
    pub async fn accel_needs_probe(&self, kernel: &Path) -> bool {
        self.accel.lock().await.is_none()
            && self.config.accel == crate::config::AccelChoice::Auto
            && accel::kvm_device_status().is_none()
            && accel::cached(
                &accel::cache_file(&self.paths.cache_dir),
                &self.config.qemu_bin,
                kernel,
            )
            .is_none()
    }

    /// The machine spec of `vm` on `image`.
    pub fn machine_spec(
        &self,
        vm: &VmRecord,
        image: &ImageRecord,
        accel: Accel,
        tap: Option<&str>,
    ) -> Result<MachineSpec, Error> {
        let img = Path::new(&image.dir);
        let dir = Path::new(&vm.dir);
        let manifest: serde_json::Value = serde_json::from_str(&image.manifest).unwrap_or_default();
        let kernel = ["vmlinux", "bzImage"]
            .iter()
            .map(|k| img.join(k))
            .find(|p| p.exists())
            .ok_or_else(|| {
                Error::failed(format!(
                    "image {:?} has no kernel in {}: rebuild or re-register it",
                    image.name, image.dir
                ))
            })?;
        let initrd = Some(img.join("initrd.img")).filter(|p| p.exists());
        Ok(MachineSpec {
            vm_id: vm.id.clone(),
            name: vm.name.clone(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            kernel,
            initrd,
            cmdline_extra: manifest
                .get("kernel_cmdline")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            drives: vec![
                Drive {
                    path: dir.join("root.qcow2"),
                    format: DriveFormat::Qcow2,
                    serial: banger_proto::ROOT_DRIVE_SERIAL,
                    read_only: false,
                },
                Drive {
                    path: dir.join("work.ext4"),
                    format: DriveFormat::Raw,
                    serial: banger_proto::WORK_DRIVE_SERIAL,
                    read_only: false,
                },
                Drive {
                    path: dir.join("config.img"),
                    format: DriveFormat::Raw,
                    serial: banger_proto::CONFIG_DRIVE_SERIAL,
                    read_only: true,
                },
            ],
            nic: match (vm.network.as_str(), &vm.mac, tap) {
                ("user", Some(mac), _) => Some(crate::engine::Nic::User {
                    mac: mac.clone(),
                    restrict: !self.config.egress,
                    forwards: vm.publish.clone(),
                }),
                ("bridge", Some(mac), Some(tap)) => Some(crate::engine::Nic::Tap {
                    ifname: tap.to_string(),
                    mac: mac.clone(),
                }),
                _ => None,
            },
            console_log: dir.join("console.log"),
            engine_log: dir.join("engine.log"),
            run_dir: self.run_dir(vm),
            accel,
            tsc_khz: banger_sys::process::tsc_khz(),
        })
    }

    /// The last console lines of a VM, for errors about a guest that did not come up.
    pub fn console_tail(&self, vm: &VmRecord, n: usize) -> String {
        crate::engine::qemu::tail(&Path::new(&vm.dir).join("console.log"), n)
    }
}
