//! Bridge networking: an address lease at create (released at delete), and
//! at each boot a tap on the daemon's bridge, the VM's DNS name and NAT out
//! (all through [`Network`]), released on stop and failure. Needs a
//! privileged daemon; refused at request time otherwise.

use super::egress::Egress;
use super::{BootPlan, Capability, Ctx, Live};
use crate::engine::Nic;
use crate::error::Error;
use crate::layout::VmDir;
use crate::net::network::{Attached, Policy};
use crate::net::{NetError, Network};
use crate::store::VmRecord;
use banger_api::{CreateVm, NetworkMode};
use futures::future::BoxFuture;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Its name in logs and in a boot's runtime state.
pub const NAME: &str = "bridge-net";

pub struct BridgeNet {
    network: Arc<Network>,
}

impl BridgeNet {
    pub fn new(network: Arc<Network>) -> BridgeNet {
        BridgeNet { network }
    }
}

/// The bridge's view of a VM's egress policy, its allow-list resolved now.
fn policy_of(vm: &VmRecord) -> Result<Policy, Error> {
    let egress = Egress::of(vm);
    Ok(Policy {
        allow: if egress.limited() {
            Some(egress.resolve()?)
        } else {
            None
        },
        host_access: egress.host_access,
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    tap: String,
}

impl Capability for BridgeNet {
    fn name(&self) -> &'static str {
        NAME
    }

    fn applies(&self, vm: &VmRecord) -> bool {
        vm.network == NetworkMode::Bridge
    }

    fn plan(&self, _req: &CreateVm, vm: &mut VmRecord) -> Result<(), Error> {
        if !self.applies(vm) {
            return Ok(());
        }
        if !self.network.privileged() {
            return Err(Error::NeedsPrivilege {
                what: "bridge networking",
                hint: "run bangerd as root or use --network user",
            });
        }
        vm.mac = Some(crate::net::mac_for(&vm.id));
        Ok(())
    }

    fn create<'a>(&'a self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move { self.network.lease(&ctx.vm.name).map(drop) })
    }

    fn destroy(&self, vm: &VmRecord, _dir: &VmDir) {
        self.network.release_lease(&vm.name);
    }

    fn prepare<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        plan: &'a mut BootPlan,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let vm = ctx.vm;
            let no_lease = || {
                Error::Network(NetError::NoLease {
                    vm: vm.name.clone(),
                })
            };
            let ip: Ipv4Addr = vm
                .ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
                .ok_or_else(no_lease)?;
            let mac = vm.mac.clone().ok_or_else(no_lease)?;
            let policy = policy_of(vm)?;
            let network = self.network.clone();
            let name = vm.name.clone();
            let tap = tokio::task::spawn_blocking(move || network.attach(&name, ip, policy))
                .await
                .map_err(|source| Error::Task {
                    task: "bridge attach",
                    source,
                })??;
            plan.guest.network = Some(self.network.guest_network(&mac, ip));
            plan.nics.push(Nic::Tap {
                ifname: tap.clone(),
                mac,
            });
            plan.runtime.insert(
                self.name().into(),
                serde_json::to_value(State { tap }).expect("state serializes"),
            );
            Ok(())
        })
    }

    fn release(&self, vm: &VmRecord, runtime: Option<&serde_json::Value>) {
        let tap = runtime
            .and_then(|v| serde_json::from_value::<State>(v.clone()).ok())
            .map(|s| s.tap);
        self.network.detach(&vm.name, tap.as_deref());
    }

    fn rename<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        old: &'a str,
        _guest: &'a mut banger_proto::GuestConfig,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let (network, old, new) = (self.network.clone(), old.to_string(), ctx.vm.name.clone());
            tokio::task::spawn_blocking(move || network.rename(&old, &new))
                .await
                .map_err(|source| Error::Task {
                    task: "bridge rename",
                    source,
                })?
        })
    }

    fn sweep(&self, live: &[Live<'_>]) {
        let on_bridge: Vec<(String, Attached)> = live
            .iter()
            .filter(|l| self.applies(l.vm))
            .filter_map(|l| {
                let tap = l
                    .runtime
                    .get(self.name())
                    .and_then(|v| serde_json::from_value::<State>(v.clone()).ok())?
                    .tap;
                let ip = l.vm.ip.as_deref()?.parse().ok()?;
                // A boot's allow-list as it was resolved then is not kept:
                // resolve again (a name may have moved; the list may not).
                let policy = policy_of(l.vm).unwrap_or_else(|e| {
                    tracing::warn!(vm = %l.vm.name, error = %crate::error::chain(&e), "cannot resolve the allow-list; the vm gets no egress");
                    Policy {
                        allow: Some(Vec::new()),
                        host_access: false,
                    }
                });
                Some((l.vm.name.clone(), Attached { tap, ip, policy }))
            })
            .collect();
        self.network.sweep(&on_bridge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Harness, empty_plan, recorded_vm};
    use banger_sys::net::link::Links;

    #[tokio::test]
    async fn a_lease_and_a_tap_are_made_and_given_back() {
        let h = Harness::new();
        let (vm, image, dir) = recorded_vm(&h, "web", NetworkMode::Bridge);
        let cap = BridgeNet::new(h.services.network.clone());
        let ctx = Ctx {
            vm: &vm,
            image: &image,
            dir: &dir,
        };
        cap.create(&ctx).await.unwrap();
        assert_eq!(h.store.leased_ips().unwrap(), ["172.30.0.2"]);
        let vm = h.store.vm("web").unwrap().unwrap();
        let ctx = Ctx {
            vm: &vm,
            image: &image,
            dir: &dir,
        };
        let mut plan = empty_plan(&vm);
        cap.prepare(&ctx, &mut plan).await.unwrap();
        assert_eq!(h.taps_on_bridge().len(), 1);
        assert_eq!(h.dns_names(), ["web"]);
        assert_eq!(
            plan.guest.network.as_ref().unwrap().address,
            "172.30.0.2/24"
        );
        cap.release(&vm, plan.runtime.get(cap.name()));
        assert_eq!(
            (h.taps().len(), h.dns_names().len(), h.runner.nat()),
            (0, 0, false)
        );
        cap.destroy(&vm, &dir);
        assert!(
            h.store.leased_ips().unwrap().is_empty(),
            "the row stays, the lease goes"
        );
        assert!(h.store.vm("web").unwrap().is_some());
    }

    /// `vm` made and booted on the bridge; returns its runtime state.
    async fn boot(h: &Harness, cap: &BridgeNet, vm: &str) -> (VmRecord, Option<serde_json::Value>) {
        let (vm, image, dir) = recorded_vm(h, vm, NetworkMode::Bridge);
        let ctx = |vm| Ctx {
            vm,
            image: &image,
            dir: &dir,
        };
        cap.create(&ctx(&vm)).await.unwrap();
        let vm = h.store.vm(&vm.name).unwrap().unwrap();
        let mut plan = empty_plan(&vm);
        cap.prepare(&ctx(&vm), &mut plan).await.unwrap();
        (vm, plan.runtime.get(cap.name()).cloned())
    }

    #[tokio::test]
    async fn the_shared_side_outlives_the_last_vm_for_an_idle_spell() {
        let mut setup = crate::testing::Setup::default();
        setup.config.bridge_idle_secs = 1;
        let h = Harness::with(setup);
        let cap = BridgeNet::new(h.services.network.clone());
        let network = &h.services.network;
        let bridge = || h.links.exists("banger0").unwrap();
        let up = || (bridge(), h.runner.nat());

        let (a, ra) = boot(&h, &cap, "a").await;
        cap.release(&a, ra.as_ref());
        assert_eq!(up(), (true, true), "kept for the next vm");
        assert!(h.taps_on_bridge().is_empty() && h.dns_names().is_empty());
        assert!(network.idling());
        assert!(
            network.leaks(false).is_empty(),
            "an idle spell is no leak: {:?}",
            network.leaks(false)
        );

        // A VM arriving ends the spell; its timer then changes nothing.
        let (b, rb) = boot(&h, &cap, "b").await;
        assert!(!network.idling());
        network.end_idle(Some(1));
        assert_eq!(up(), (true, true), "b is on it");
        cap.release(&b, rb.as_ref());
        network.end_idle(Some(1));
        assert_eq!(
            up(),
            (true, true),
            "the first spell's end is not the second's"
        );

        // The second spell ends by its timer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while bridge() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(up(), (false, false), "gone when the spell ended");
        assert!(h.taps().is_empty(), "the idle pool went too");
        assert!(!network.idling());
    }

    #[tokio::test]
    async fn nft_runs_only_when_the_rules_change() {
        let h = Harness::new();
        let cap = BridgeNet::new(h.services.network.clone());
        let (a, ra) = boot(&h, &cap, "a").await;
        let after_a = h.runner.runs_of("nft");
        assert!(after_a >= 1 && h.runner.nat());
        let (b, rb) = boot(&h, &cap, "b").await;
        cap.release(&b, rb.as_ref());
        assert_eq!(
            h.runner.runs_of("nft"),
            after_a,
            "b, with the config's policy, changed no rule"
        );
        h.services.network.forget_installed_rules();
        let (c, rc) = boot(&h, &cap, "c").await;
        assert_eq!(h.runner.runs_of("nft"), after_a + 1, "lost rules come back");
        cap.release(&c, rc.as_ref());
        cap.release(&a, ra.as_ref());
        assert!(!h.runner.nat(), "the last vm takes the table");
    }

    #[tokio::test]
    async fn daemon_shutdown_ends_an_idle_spell() {
        let mut setup = crate::testing::Setup::default();
        setup.config.bridge_idle_secs = 3600;
        let h = Harness::with(setup);
        let cap = BridgeNet::new(h.services.network.clone());
        let (a, ra) = boot(&h, &cap, "a").await;
        cap.release(&a, ra.as_ref());
        assert!(h.links.exists("banger0").unwrap());
        h.services.network.end_idle(None);
        assert!(!h.links.exists("banger0").unwrap() && !h.runner.nat());
        assert!(h.taps().is_empty());
    }

    #[tokio::test]
    async fn a_bridge_another_instances_vms_are_on_outlives_this_ones_last_vm() {
        use banger_sys::net::tap::Taps;
        let h = Harness::new();
        let cap = BridgeNet::new(h.services.network.clone());
        let (a, ra) = boot(&h, &cap, "a").await;
        // Another instance (another mark) put a VM's tap on the same bridge.
        let theirs = "bgtap9999aaaaaa";
        h.links.create_tap(theirs, &Default::default()).unwrap();
        h.links.attach(theirs, "banger0").unwrap();
        cap.release(&a, ra.as_ref());
        assert!(h.links.exists("banger0").unwrap(), "their vm keeps it");
        assert!(!h.runner.nat(), "this instance's own NAT table goes");
        let leaks = h.services.network.leaks(false);
        assert!(
            leaks.iter().all(|c| !c.detail.contains("bridge banger0")),
            "not this instance's leak: {leaks:?}"
        );
        h.links.detach(theirs).unwrap();
        h.services.network.sweep(&[]);
        assert!(!h.links.exists("banger0").unwrap(), "unused, it goes");
    }

    #[tokio::test]
    async fn taps_of_an_instance_with_the_same_mark_are_told_apart_by_their_alias() {
        use banger_sys::net::link::Links;
        use banger_sys::net::tap::Taps;
        let h = Harness::new();
        let cap = BridgeNet::new(h.services.network.clone());
        let (a, ra) = boot(&h, &cap, "a").await;
        let net = &h.services.network;
        let mine = h.links.list(net.tap_prefix()).unwrap();
        assert!(!mine.is_empty());
        assert!(
            mine.iter()
                .all(|l| l.alias.as_deref().is_some_and(|t| t.starts_with("banger:"))),
            "every tap this instance makes is labelled: {mine:?}"
        );
        // Another instance whose mark is the same: the same prefix.
        let theirs = format!("{}ffffff", net.tap_prefix());
        h.links.create_tap(&theirs, &Default::default()).unwrap();
        h.links.set_alias(&theirs, "banger:someone-else").unwrap();
        h.links.attach(&theirs, "banger0").unwrap();
        let unlabelled = format!("{}000001", net.tap_prefix());
        h.links
            .create_tap(&unlabelled, &Default::default())
            .unwrap();
        let leaks = format!("{:?}", net.leaks(false));
        assert!(!leaks.contains(&theirs), "{leaks}");
        assert!(
            leaks.contains(&unlabelled),
            "untagged: taken as ours: {leaks}"
        );
        cap.release(&a, ra.as_ref());
        assert!(
            h.links.exists("banger0").unwrap(),
            "their tap keeps the bridge"
        );
        net.sweep(&[]);
        net.settle();
        assert!(
            h.links.exists(&theirs).unwrap(),
            "their tap survives the sweep"
        );
        assert!(!h.links.exists(&unlabelled).unwrap());
    }

    #[tokio::test]
    async fn a_full_subnet_is_busy_not_broken() {
        let mut setup = crate::testing::Setup::default();
        setup.config.bridge_subnet = "10.9.0.0/30".into();
        let h = Harness::with(setup);
        recorded_vm(&h, "a", NetworkMode::Bridge);
        recorded_vm(&h, "b", NetworkMode::Bridge);
        h.services.network.lease("a").unwrap();
        let err = h.services.network.lease("b").unwrap_err();
        assert_eq!(err.code(), banger_api::ErrorCode::Busy);
        assert!(
            err.to_string()
                .contains("no free address left in 10.9.0.0/30"),
            "{err}"
        );
    }
}
