//! Wiring: the services of one daemon (lifecycle, images, network,
//! operations, doctor), built from its paths, config, store and the
//! kernel-facing dependencies in [`Deps`], which unit tests replace with
//! fakes.

use crate::capability;
use crate::config::Config;
use crate::doctor::Doctor;
use crate::engine::Engines;
use crate::engine::qemu::QemuEngine;
use crate::error::Error;
use crate::images::Images;
use crate::net::dns::{DnsServer, Dnsmasq};
use crate::net::{Network, NetworkDeps};
use crate::ops::Operations;
use crate::store::Store;
use crate::vm::{Lifecycle, LifecycleDeps};
use banger_api::paths::Paths;
use banger_sys::command::{Runner, SystemRunner};
use banger_sys::net::link::{Links, NetlinkLinks};
use banger_sys::net::tap::{Taps, TunTaps};
use banger_sys::spawn::{Spawner, SystemSpawner};
use std::sync::Arc;

/// What the services reach the host through.
pub struct Deps {
    pub engines: Engines,
    pub runner: Arc<dyn Runner>,
    pub links: Arc<dyn Links>,
    pub taps: Arc<dyn Taps>,
    pub dns: Arc<dyn DnsServer>,
    /// May this daemon make taps and bridges?
    pub privileged: bool,
    /// The daemon user's home directory.
    pub home: std::path::PathBuf,
    /// Where the DNS server reads the VMs' names (see `net::network`).
    pub dns_hosts_dir: std::path::PathBuf,
    /// Starts the helper processes a boot needs (user mode's passt).
    pub spawner: Arc<dyn Spawner>,
    /// passt's program for user mode; `None`: QEMU's slirp only.
    pub passt_bin: Option<std::path::PathBuf>,
}

impl Deps {
    /// The real ones: QEMU, the system's programs, netlink, `/dev/net/tun`,
    /// dnsmasq, passt.
    pub fn system(config: &Config, paths: &Paths) -> Result<Deps, Error> {
        let runner: Arc<dyn Runner> = Arc::new(SystemRunner);
        let qemu = QemuEngine::new(
            config.qemu_bin.clone(),
            config.accel,
            &paths.cache_dir,
            runner.clone(),
            Arc::new(SystemSpawner),
        );
        let links = NetlinkLinks::new().map_err(|e| Error::Network(e.into()))?;
        Ok(Deps {
            engines: Engines::new(Arc::new(qemu)),
            runner,
            links: Arc::new(links),
            taps: Arc::new(TunTaps),
            dns: Arc::new(Dnsmasq),
            privileged: banger_sys::process::euid() == 0,
            home: std::env::var_os("HOME")
                .map(Into::into)
                .unwrap_or_else(|| "/".into()),
            dns_hosts_dir: crate::net::network::public_hosts_dir(&paths.state_dir),
            spawner: Arc::new(SystemSpawner),
            passt_bin: Some("passt".into()),
        })
    }
}

/// One daemon's services.
pub struct Services {
    pub vms: Arc<Lifecycle>,
    pub workspaces: Arc<crate::workspace::Workspaces>,
    pub sessions: Arc<crate::session::Sessions>,
    pub images: Arc<Images>,
    pub ops: Arc<Operations>,
    pub network: Arc<Network>,
    pub doctor: Arc<Doctor>,
}

impl Services {
    /// Builds the services (inside a tokio runtime: the lifecycle starts its
    /// monitor).
    pub fn new(paths: Paths, config: Config, store: Store, deps: Deps) -> Result<Services, Error> {
        Services::with_capabilities(paths, config, Arc::new(store), deps, capability::standard)
    }

    /// [`Services::new`] with another capability list (tests).
    pub fn with_capabilities(
        paths: Paths,
        config: Config,
        store: Arc<Store>,
        deps: Deps,
        capabilities: impl FnOnce(&capability::Deps) -> capability::Pipeline,
    ) -> Result<Services, Error> {
        let config = Arc::new(config);
        let ops = Arc::new(Operations::new(store.clone()));
        let images = Arc::new(Images::new(
            paths.clone(),
            config.agent_bin.clone(),
            store.clone(),
            deps.runner.clone(),
            ops.clone(),
        ));
        let network = Arc::new(Network::new(NetworkDeps {
            config: config.clone(),
            state_dir: paths.state_dir.clone(),
            runtime_dir: paths.runtime_dir.clone(),
            store: store.clone(),
            links: deps.links,
            taps: deps.taps,
            runner: deps.runner.clone(),
            dns: deps.dns,
            dns_hosts_dir: deps.dns_hosts_dir,
            privileged: deps.privileged,
        })?);
        let capabilities = capabilities(&capability::Deps {
            config: config.clone(),
            paths: paths.clone(),
            runner: deps.runner.clone(),
            network: network.clone(),
            home: deps.home.clone(),
            spawner: deps.spawner.clone(),
            passt_bin: deps.passt_bin.clone(),
        });
        let doctor = Arc::new(Doctor::new(
            paths.clone(),
            deps.engines.clone(),
            network.clone(),
            images.clone(),
        ));
        let vms = Lifecycle::new(LifecycleDeps {
            config,
            paths,
            store: store.clone(),
            engines: deps.engines,
            capabilities,
            images: images.clone(),
            ops: ops.clone(),
            network: network.clone(),
            runner: deps.runner.clone(),
        });
        let workspaces = Arc::new(crate::workspace::Workspaces::new(
            vms.clone(),
            store.clone(),
            deps.runner,
            ops.clone(),
        ));
        let sessions = Arc::new(crate::session::Sessions::new(vms.clone(), store.clone()));
        Ok(Services {
            vms,
            workspaces,
            sessions,
            images,
            ops,
            network,
            doctor,
        })
    }
}
