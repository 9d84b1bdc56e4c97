//! User-mode networking: no privileges, no tap. The guest gets the fixed
//! addresses of [`crate::net::user`]; the host reaches it through ports
//! published on 127.0.0.1, chosen at create (`--publish HOST:GUEST`, plus a
//! free port for ssh when none forwards guest port 22). Also refuses
//! `--publish` for VMs of other modes.
//!
//! Each boot picks a backend ([`backend`]):
//!
//! - passt when it is installed (and the host has a default route, which
//!   passt needs): one process per VM, started here in `prepare` and
//!   stopped in `release` ([`crate::net::passt`]). The guest reaches the
//!   outside but not the host's loopback, unless it was created with
//!   `--host-access`.
//! - otherwise QEMU's slirp, which always maps the gateway to the host's
//!   loopback: with passt missing, guests reach the host's 127.0.0.1
//!   (doctor warns); with no default route there is no outside to reach,
//!   so the guest is cut off entirely (`restrict=on`) unless it asked for
//!   `--host-access`.
//!
//! With `egress = false` in the config, slirp's `restrict=on` cuts every
//! connection a guest starts, the host's included, whatever it asked for.

use super::egress::Egress;
use super::{BootPlan, Capability, Ctx, Live};
use crate::engine::Nic;
use crate::error::Error;
use crate::layout::VmDir;
use crate::net::passt;
use crate::store::VmRecord;
use banger_api::{CreateVm, NetworkMode, PortForward};
use banger_sys::spawn::Spawner;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct UserNet {
    egress: bool,
    spawner: Arc<dyn Spawner>,
    /// passt's program, looked up in `PATH` at each boot; `None`: slirp only.
    passt_bin: Option<PathBuf>,
    /// Where VMs' dirs are: a VM's passt socket is found from its id, never
    /// from a scratch file.
    state_dir: PathBuf,
    runtime_dir: PathBuf,
}

/// How one boot's user-mode network is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// passt at `program`; `host_loopback` maps the gateway to the host.
    Passt {
        program: PathBuf,
        host_loopback: bool,
    },
    /// QEMU's slirp; `restrict` cuts every connection the guest starts.
    Slirp { restrict: bool },
}

/// The backend for a VM: `egress` is the config's, `host_access` the VM's,
/// `passt` the program if installed, `default_route` whether the host has one.
pub fn backend(
    egress: bool,
    host_access: bool,
    passt: Option<PathBuf>,
    default_route: bool,
) -> Backend {
    match passt {
        _ if !egress => Backend::Slirp { restrict: true },
        Some(program) if default_route => Backend::Passt {
            program,
            host_loopback: host_access,
        },
        // No way out anyway: nothing but what the VM asked for.
        Some(_) => Backend::Slirp {
            restrict: !host_access,
        },
        // The only way out is slirp's, host loopback included (doctor warns).
        None => Backend::Slirp { restrict: false },
    }
}

/// What `prepare` leaves in the runtime for `release`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// passt's pid, when this boot runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    passt: Option<u32>,
}

impl UserNet {
    pub fn new(
        egress: bool,
        spawner: Arc<dyn Spawner>,
        passt_bin: Option<PathBuf>,
        paths: &banger_api::paths::Paths,
    ) -> UserNet {
        UserNet {
            egress,
            spawner,
            passt_bin,
            state_dir: paths.state_dir.clone(),
            runtime_dir: paths.runtime_dir.clone(),
        }
    }

    fn socket_of(&self, vm_id: &str) -> PathBuf {
        VmDir::new(&self.state_dir, &self.runtime_dir, vm_id)
            .run
            .join(passt::SOCKET)
    }

    fn backend_for(&self, vm: &VmRecord) -> Backend {
        let passt = self
            .passt_bin
            .as_ref()
            .and_then(|p| banger_sys::command::which(&p.to_string_lossy()));
        backend(
            self.egress,
            Egress::of(vm).host_access,
            passt,
            banger_sys::net::has_ipv4_default_route(),
        )
    }

    async fn start_passt(
        &self,
        program: &Path,
        host_loopback: bool,
        ctx: &Ctx<'_>,
    ) -> Result<(PathBuf, u32), Error> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ctx.dir.run)
            .map_err(Error::io(format!(
                "cannot create {}",
                ctx.dir.run.display()
            )))?;
        let socket = self.socket_of(&ctx.vm.id);
        let log = ctx.dir.file(passt::LOG);
        let euid = banger_sys::process::euid();
        let options = passt::Options {
            socket: &socket,
            log: &log,
            forwards: &ctx.vm.publish,
            host_loopback,
            runas: (euid == 0).then_some(euid),
        };
        let pid = passt::start(&*self.spawner, program, &options)
            .await
            .map_err(|e| Error::Network(e.into()))?;
        tracing::info!(vm = %ctx.vm.name, pid, host_loopback, "passt started");
        Ok((socket, pid))
    }
}

impl Capability for UserNet {
    fn name(&self) -> &'static str {
        "user-net"
    }

    fn applies(&self, vm: &VmRecord) -> bool {
        vm.network == NetworkMode::User
    }

    fn plan(&self, req: &CreateVm, vm: &mut VmRecord) -> Result<(), Error> {
        let mut ports = req
            .publish
            .iter()
            .map(|p| PortForward::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|p| Error::invalid("--publish", p))?;
        if !self.applies(vm) {
            if !ports.is_empty() {
                let reached = match vm.network {
                    NetworkMode::Bridge => "at its own address",
                    _ => "through banger only",
                };
                return Err(Error::invalid(
                    "--publish",
                    format!(
                        "needs --network user; a {} vm is reached {reached}",
                        vm.network
                    ),
                ));
            }
            return Ok(());
        }
        for p in &ports {
            if std::net::TcpListener::bind(("127.0.0.1", p.host)).is_err() {
                return Err(Error::PortInUse { port: p.host });
            }
        }
        if !ports.iter().any(|p| p.guest == 22) {
            let host = crate::net::free_loopback_port()
                .map_err(Error::io("cannot pick a loopback port for ssh"))?;
            ports.push(PortForward { host, guest: 22 });
        }
        vm.publish = ports;
        vm.mac = Some(crate::net::mac_for(&vm.id));
        Ok(())
    }

    fn prepare<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        plan: &'a mut BootPlan,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mac = ctx
                .vm
                .mac
                .clone()
                .unwrap_or_else(|| crate::net::mac_for(&ctx.vm.id));
            plan.guest.network = Some(banger_proto::GuestNetwork {
                mac: mac.clone(),
                address: crate::net::user::ADDRESS.into(),
                gateway: Some(crate::net::user::GATEWAY.into()),
                dns: vec![crate::net::user::DNS.into()],
                search: None,
            });
            let backend = self.backend_for(ctx.vm);
            tracing::debug!(vm = %ctx.vm.name, ?backend, "user-mode network");
            self.attach(backend, mac, ctx, plan).await
        })
    }

    fn release(&self, vm: &VmRecord, runtime: Option<&serde_json::Value>) {
        let socket = self.socket_of(&vm.id);
        let recorded = runtime
            .and_then(|v| serde_json::from_value::<State>(v.clone()).ok())
            .unwrap_or_default()
            .passt;
        // A boot that failed before its runtime was kept left only the pid file.
        if let Some(pid) = recorded.or_else(|| passt::read_pid(&socket)) {
            passt::stop(pid, &socket);
        }
    }

    fn sweep(&self, live: &[Live<'_>]) {
        let Ok(dirs) = std::fs::read_dir(self.runtime_dir.join("vms")) else {
            return;
        };
        for dir in dirs.flatten() {
            let id = dir.file_name().to_string_lossy().into_owned();
            if live.iter().any(|l| l.vm.id == id) {
                continue;
            }
            let socket = self.socket_of(&id);
            if let Some(pid) = passt::read_pid(&socket) {
                tracing::info!(vm_id = %id, pid, "stopping the passt of a vm that is not running");
                passt::stop(pid, &socket);
            }
        }
    }
}

impl UserNet {
    /// The NIC (and for passt, its process) of one boot on `backend`.
    async fn attach(
        &self,
        backend: Backend,
        mac: String,
        ctx: &Ctx<'_>,
        plan: &mut BootPlan,
    ) -> Result<(), Error> {
        match backend {
            Backend::Passt {
                program,
                host_loopback,
            } => {
                let (socket, pid) = self.start_passt(&program, host_loopback, ctx).await?;
                plan.runtime.insert(
                    self.name().into(),
                    serde_json::to_value(State { passt: Some(pid) }).expect("serializes"),
                );
                plan.nics.push(Nic::Stream { socket, mac });
            }
            Backend::Slirp { restrict } => plan.nics.push(Nic::User {
                mac,
                restrict,
                forwards: ctx.vm.publish.clone(),
            }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Harness, empty_plan, recorded_vm};
    use banger_sys::command::Cmd;
    use banger_sys::spawn::RecordingSpawner;
    use std::time::{Duration, Instant};

    #[test]
    fn passt_serves_user_mode_when_it_can_and_slirp_otherwise() {
        let passt = || Some(PathBuf::from("/usr/bin/passt"));
        let via_passt = |host_loopback| Backend::Passt {
            program: "/usr/bin/passt".into(),
            host_loopback,
        };
        assert_eq!(backend(true, false, passt(), true), via_passt(false));
        assert_eq!(backend(true, true, passt(), true), via_passt(true));
        // Without passt, slirp: the host's loopback is reachable (doctor warns).
        assert_eq!(
            backend(true, false, None, true),
            Backend::Slirp { restrict: false }
        );
        // No default route: no outside to reach, so nothing unless asked.
        assert_eq!(
            backend(true, false, passt(), false),
            Backend::Slirp { restrict: true }
        );
        assert_eq!(
            backend(true, true, passt(), false),
            Backend::Slirp { restrict: false }
        );
        // egress = false cuts everything, whatever the vm asked for.
        for host_access in [false, true] {
            assert_eq!(
                backend(false, host_access, passt(), true),
                Backend::Slirp { restrict: true }
            );
        }
    }

    fn wait_dead(pid: u32) -> bool {
        let t0 = Instant::now();
        while banger_sys::process::alive(pid) {
            if t0.elapsed() > Duration::from_secs(5) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// A spawner whose "passt" binds nothing but makes `socket` and then
    /// runs with passt's name and `--socket <socket>` in its arguments.
    fn fake_passt(socket: &Path) -> RecordingSpawner {
        let s = socket.display();
        RecordingSpawner::new(Cmd::new("bash").args([
            "-c".to_string(),
            // The socket appears only once the process is "passt" (as the
            // real one makes it after starting): attach returns when it
            // exists, and the identity check must not race the exec.
            format!("exec -a passt sh -c ': > {s}; sleep 100; :' x --socket {s}"),
        ]))
    }

    #[tokio::test]
    async fn release_stops_the_passt_of_its_boot_and_nothing_else() {
        let h = Harness::unprivileged();
        let (mut vm, image, dir) = recorded_vm(&h, "web", NetworkMode::User);
        vm.publish = vec![PortForward {
            host: 2222,
            guest: 22,
        }];
        let socket = dir.run.join(passt::SOCKET);
        let spawner = Arc::new(fake_passt(&socket));
        let cap = UserNet::new(true, spawner.clone(), None, &h.paths);
        let ctx = Ctx {
            vm: &vm,
            image: &image,
            dir: &dir,
        };
        let mut plan = empty_plan(&vm);
        let mac = vm.mac.clone().unwrap();
        let passt_backend = Backend::Passt {
            program: "passt".into(),
            host_loopback: false,
        };
        cap.attach(passt_backend, mac.clone(), &ctx, &mut plan)
            .await
            .unwrap();
        assert_eq!(
            plan.nics,
            [Nic::Stream {
                socket: socket.clone(),
                mac
            }]
        );
        let (cmd, _) = &spawner.spawns()[0];
        let args = cmd.args_lossy();
        assert!(args.contains(&"--no-map-gw".to_string()), "{args:?}");
        assert!(args.contains(&"127.0.0.1/2222:22".to_string()), "{args:?}");
        let pid = plan.runtime[cap.name()]["passt"].as_u64().unwrap() as u32;
        assert!(passt::is_ours(pid, &socket));

        // A pid the runtime names that is not this vm's passt survives.
        let mut other = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let stale = serde_json::json!({ "passt": other.id() });
        cap.release(&vm, Some(&stale));
        assert!(banger_sys::process::alive(other.id()), "the sleep runs on");
        other.kill().unwrap();
        other.wait().unwrap();

        cap.release(&vm, plan.runtime.get(cap.name()));
        assert!(wait_dead(pid), "passt was stopped");
        assert!(!socket.exists() && passt::read_pid(&socket).is_none());
        cap.release(&vm, plan.runtime.get(cap.name()));
    }

    #[tokio::test]
    async fn the_sweep_stops_the_passt_of_a_vm_that_is_not_running() {
        let h = Harness::unprivileged();
        let (vm, image, dir) = recorded_vm(&h, "web", NetworkMode::User);
        let socket = dir.run.join(passt::SOCKET);
        let cap = UserNet::new(true, Arc::new(fake_passt(&socket)), None, &h.paths);
        let ctx = Ctx {
            vm: &vm,
            image: &image,
            dir: &dir,
        };
        let mut plan = empty_plan(&vm);
        let passt_backend = Backend::Passt {
            program: "passt".into(),
            host_loopback: true,
        };
        cap.attach(passt_backend, "52:54:00:00:00:01".into(), &ctx, &mut plan)
            .await
            .unwrap();
        let pid = passt::read_pid(&socket).unwrap();
        cap.sweep(&[Live {
            vm: &vm,
            runtime: &plan.runtime,
        }]);
        assert!(passt::is_ours(pid, &socket), "a live vm keeps its passt");
        cap.sweep(&[]);
        assert!(wait_dead(pid), "a dead vm's passt is stopped");
    }
}
