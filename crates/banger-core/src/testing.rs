//! A daemon's services on fakes, for unit tests of the lifecycle and the
//! capabilities: the fake engine (the real agent server behind a socket
//! pair), fake links and taps, a runner that copies files but runs nothing,
//! a spawner that starts nothing (so user mode is QEMU's slirp), no DNS
//! server, a `:memory:` store, and temp dirs for state and sockets.
//! Needs no root and no VM.

use crate::capability::{self, Pipeline};
use crate::config::Config;
use crate::engine::Engines;
use crate::engine::fake::FakeEngine;
use crate::net::dns::NoDns;
use crate::ops::Op;
use crate::services::{Deps, Services};
use crate::store::{ImageRecord, Store};
use banger_api::paths::Paths;
use banger_api::{CreateVm, EngineKind, NetworkMode, Operation, OperationState};
use banger_sys::command::{Cmd, CommandError, Output, Runner};
use banger_sys::net::fake::FakeLinks;
use banger_sys::net::link::Links;
use banger_sys::spawn::RecordingSpawner;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Runs nothing but `cp` (so work disks exist) and keeps what `nft` was
/// told (so tests can see whether banger's NAT table is there).
#[derive(Default)]
pub struct FakeRunner {
    failing: Mutex<HashSet<String>>,
    nat: Mutex<bool>,
    log: Mutex<Vec<String>>,
    firewall: Mutex<String>,
}

impl FakeRunner {
    pub fn fail(&self, program: &str) {
        self.failing.lock().unwrap().insert(program.into());
    }

    pub fn heal(&self) {
        self.failing.lock().unwrap().clear();
    }

    /// The last firewall script nft was given.
    pub fn firewall(&self) -> String {
        self.firewall.lock().unwrap().clone()
    }

    /// How many times `program` was run.
    pub fn runs_of(&self, program: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| l.split_whitespace().next() == Some(program))
            .count()
    }

    /// Whether banger's NAT table exists now.
    pub fn nat(&self) -> bool {
        *self.nat.lock().unwrap()
    }
}

impl Runner for FakeRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, CommandError> {
        self.log.lock().unwrap().push(cmd.to_string());
        if self.failing.lock().unwrap().contains(&cmd.program) {
            return Err(CommandError::Failed {
                program: cmd.program.clone(),
                code: Some(1),
                signal: None,
                stderr_tail: "injected failure".into(),
            });
        }
        let args = cmd.args_lossy();
        match cmd.program.as_str() {
            "cp" => {
                let (from, to) = (&args[args.len() - 2], &args[args.len() - 1]);
                std::fs::copy(from, to).map_err(|source| CommandError::Io {
                    program: "cp".into(),
                    source,
                })?;
            }
            "nft" => {
                let script = String::from_utf8_lossy(cmd.stdin.as_deref().unwrap_or_default());
                *self.firewall.lock().unwrap() = script.to_string();
                if script.contains("chain postrouting") {
                    *self.nat.lock().unwrap() = true;
                } else if script.contains("delete table") {
                    *self.nat.lock().unwrap() = false;
                }
            }
            _ => {}
        }
        Ok(Output::default())
    }
}

pub struct Harness {
    _root: tempfile::TempDir,
    pub paths: Paths,
    pub config: Config,
    pub store: Arc<Store>,
    pub services: Services,
    pub engine: Arc<FakeEngine>,
    pub links: Arc<FakeLinks>,
    pub runner: Arc<FakeRunner>,
}

/// Builds a capability list from the daemon's parts.
pub type MakePipeline = Box<dyn FnOnce(&capability::Deps) -> Pipeline>;

/// How a harness is set up.
pub struct Setup {
    pub config: Config,
    pub capabilities: Option<MakePipeline>,
    /// Extra engines beside the default fake QEMU.
    pub engines: Vec<Arc<FakeEngine>>,
    pub privileged: bool,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            config: Config {
                network: crate::config::NetworkChoice::None,
                boot_timeout_secs: 5,
                stop_timeout_secs: 1,
                default_image: "img".into(),
                tap_pool_size: 1,
                bridge_idle_secs: 0,
                warm_standby: false,
                default_disk_size_mib: 64,
                ..Config::default()
            },
            capabilities: None,
            engines: Vec::new(),
            privileged: true,
        }
    }
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with(Setup::default())
    }

    pub fn unprivileged() -> Harness {
        Harness::with(Setup {
            privileged: false,
            ..Setup::default()
        })
    }

    pub fn with(setup: Setup) -> Harness {
        let root = tempfile::tempdir().unwrap();
        let paths = Paths {
            config_file: root.path().join("config.toml"),
            state_dir: root.path().join("state"),
            runtime_dir: root.path().join("run"),
            cache_dir: root.path().join("cache"),
        };
        let key = root.path().join("id_ed25519");
        std::fs::write(&key, "private").unwrap();
        std::fs::write(root.path().join("id_ed25519.pub"), "ssh-ed25519 AAAA test").unwrap();
        let mut config = setup.config.for_instance(&paths.state_dir);
        config.ssh_key = Some(key);
        let engine = Arc::new(FakeEngine::new(EngineKind::Qemu));
        let links = Arc::new(FakeLinks::new());
        let runner = Arc::new(FakeRunner::default());
        let store = Arc::new(Store::open_in_memory().unwrap());
        store.insert_image(&image(root.path())).unwrap();
        let mut engines = Engines::new(engine.clone());
        for e in setup.engines {
            engines = engines.with(e);
        }
        let deps = Deps {
            engines,
            runner: runner.clone(),
            links: links.clone(),
            taps: links.clone(),
            dns: Arc::new(NoDns),
            privileged: setup.privileged,
            home: root.path().join("home"),
            dns_hosts_dir: root.path().join("dns-hosts"),
            spawner: Arc::new(RecordingSpawner::missing()),
            passt_bin: None,
        };
        let make = setup
            .capabilities
            .unwrap_or_else(|| Box::new(capability::standard));
        let services =
            Services::with_capabilities(paths.clone(), config.clone(), store.clone(), deps, make)
                .unwrap();
        Harness {
            _root: root,
            paths,
            config,
            store,
            services,
            engine,
            links,
            runner,
        }
    }

    /// A daemon restart: new services (nothing in memory) over the same
    /// store, engine processes and host.
    pub fn restart_daemon(&mut self) {
        let deps = Deps {
            engines: Engines::new(self.engine.clone()),
            runner: self.runner.clone(),
            links: self.links.clone(),
            taps: self.links.clone(),
            dns: Arc::new(NoDns),
            privileged: true,
            home: self.paths.state_dir.join("../home"),
            dns_hosts_dir: self.paths.state_dir.join("../dns-hosts"),
            spawner: Arc::new(RecordingSpawner::missing()),
            passt_bin: None,
        };
        self.services = Services::with_capabilities(
            self.paths.clone(),
            self.config.clone(),
            self.store.clone(),
            deps,
            capability::standard,
        )
        .unwrap();
    }

    /// Creates a VM and waits for the operation's end.
    pub async fn create(&self, name: &str, network: NetworkMode) -> Operation {
        let op = self
            .services
            .vms
            .create(CreateVm {
                name: Some(name.into()),
                network: Some(network),
                ..Default::default()
            })
            .unwrap();
        finish(op).await
    }

    /// The names `vm list` shows.
    pub fn listed(&self) -> Vec<String> {
        let vms = self.services.vms.list().unwrap();
        vms.into_iter().map(|v| v.name).collect()
    }

    /// Taps that exist.
    pub fn taps(&self) -> Vec<String> {
        self.services.network.settle();
        self.links
            .list(crate::net::tap_pool::TAP_PREFIX)
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect()
    }

    /// Taps attached to a bridge.
    pub fn taps_on_bridge(&self) -> Vec<String> {
        self.services.network.settle();
        self.links
            .list(crate::net::tap_pool::TAP_PREFIX)
            .unwrap()
            .into_iter()
            .filter(|l| l.master.is_some())
            .map(|l| l.name)
            .collect()
    }

    /// Names in the DNS hosts dir.
    pub fn dns_names(&self) -> Vec<String> {
        std::fs::read_dir(self.services.network.hosts_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Directories under `<state>/vms` and `<run>/vms`.
    pub fn vm_dirs(&self) -> Vec<PathBuf> {
        [&self.paths.state_dir, &self.paths.runtime_dir]
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(d.join("vms"))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.path())
            .collect()
    }
}

/// A recorded VM of `mode` (its row inserted), its directory made, and the
/// harness image: for capability tests.
pub fn recorded_vm(
    h: &Harness,
    name: &str,
    mode: NetworkMode,
) -> (crate::store::VmRecord, ImageRecord, crate::layout::VmDir) {
    let id = format!("id{name}");
    let dir = crate::layout::VmDir::new(&h.paths.state_dir, &h.paths.runtime_dir, &id);
    dir.create().unwrap();
    let vm = crate::store::VmRecord {
        id: id.clone(),
        name: name.into(),
        image: "img".into(),
        state: banger_api::VmState::Creating,
        cpus: 1,
        memory_mib: 256,
        disk_size_mib: 64,
        created_at: 1,
        dir: dir.state.to_string_lossy().into_owned(),
        last_error: None,
        network: mode,
        publish: vec![],
        ip: None,
        mac: Some(crate::net::mac_for(&id)),
        engine: EngineKind::Qemu,
        options: Default::default(),
    };
    h.store.insert_vm(&vm).unwrap();
    (vm, h.store.image("img").unwrap().unwrap(), dir)
}

pub fn empty_plan(vm: &crate::store::VmRecord) -> capability::BootPlan {
    capability::BootPlan {
        drives: vec![],
        nics: vec![],
        guest: banger_proto::GuestConfig {
            version: 1,
            vm_name: vm.name.clone(),
            hostname: vm.name.clone(),
            authorized_keys: vec![],
            network: None,
            git_identity: vec![],
            ssh_host_key: None,
        },
        restore: false,
        runtime: Default::default(),
    }
}

pub async fn finish(op: Arc<Op>) -> Operation {
    tokio::time::timeout(std::time::Duration::from_secs(10), op.wait())
        .await
        .expect("the operation ends")
}

/// What stage `stage` of `op` said it did ("" when it said nothing).
pub fn stage_detail<'a>(op: &'a Operation, stage: &str) -> &'a str {
    op.stages
        .iter()
        .find(|s| s.name == stage)
        .and_then(|s| s.detail.as_deref())
        .unwrap_or_default()
}

pub fn succeeded(op: &Operation) -> bool {
    op.state == OperationState::Succeeded
}

/// An image directory with the files a boot looks for.
fn image(root: &Path) -> ImageRecord {
    let dir = root.join("images/img");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["vmlinux", "rootfs.ext4", "work-seed.ext4"] {
        std::fs::write(dir.join(f), f).unwrap();
    }
    ImageRecord {
        name: "img".into(),
        source: "minimal".into(),
        kernel_version: None,
        dir: dir.to_string_lossy().into_owned(),
        created_at: 1,
        manifest: "{}".into(),
    }
}
