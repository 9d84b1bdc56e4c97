//! User-mode networking: the engine's own NAT, no privileges. The guest
//! gets QEMU's fixed slirp addresses; the host reaches it through ports
//! published on 127.0.0.1, chosen at create (`--publish HOST:GUEST`, plus a
//! free port for ssh when none forwards guest port 22). Also refuses
//! `--publish` for VMs of other modes.

use super::{BootPlan, Capability, Ctx};
use crate::engine::Nic;
use crate::error::Error;
use crate::store::VmRecord;
use banger_api::{CreateVm, NetworkMode, PortForward};
use futures::future::BoxFuture;

pub struct UserNet {
    egress: bool,
}

impl UserNet {
    pub fn new(egress: bool) -> UserNet {
        UserNet { egress }
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
        plan.nics.push(Nic::User {
            mac,
            restrict: !self.egress,
            forwards: ctx.vm.publish.clone(),
        });
        Box::pin(async { Ok(()) })
    }
}
