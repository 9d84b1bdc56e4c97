//! The network service: bridge mode's host side and address leases.
//!
//! The host side is made idempotently by the first bridge-mode boot (the
//! bridge with its address, banger's own nftables NAT table, dnsmasq) and
//! each VM gets a tap (from a warm pool, refilled after each boot) on the
//! bridge and a name in DNS. [`Network::detach`] gives the tap back and
//! takes the name away. When the last attached VM goes, the shared side
//! (bridge, DNS server, NAT table, idle pool) stays up for
//! `bridge_idle_secs` (an idle spell), so back-to-back `vm run --rm`s do
//! not pay for taking it down (~90 ms) and making it again; a bridge VM
//! arriving ends the spell, and at its end, or at daemon shutdown
//! ([`Network::end_idle`]), the shared side goes: an idle host carries
//! nothing of ours. Leases are the `ip` column of VM rows (unique), made at
//! create and released at delete.
//!
//! A bridge is one instance's at a time: two root daemons (state dirs) with
//! the same `bridge_name` would hand out the same addresses on it and race
//! for its DNS port. The instance that makes the shared side holds an
//! `flock` on `bridge-<name>-<netns>.lock` beside the public hosts dirs
//! (`/run/banger-dns`, root's) until it takes the shared side down, or
//! dies; another instance's bridge VM is refused, naming the holder.
//!
//! Which VMs are attached is this service's own state, rebuilt at daemon
//! start by [`Network::sweep`] from the VMs it adopted, which also removes
//! taps, names and NAT that no live VM owns.

use super::dns::DnsServer;
use super::tap_pool::{TapPool, new_tap_name};
use super::{NetError, ipam};
use crate::config::{Config, NetworkChoice};
use crate::error::Error;
use crate::store::{Store, StoreError};
use banger_api::NetworkMode;
use banger_sys::command::Runner;
use banger_sys::net::Ipv4Cidr;
use banger_sys::net::dnsmasq::{self, DnsmasqConfig};
use banger_sys::net::link::{Link, Links};
use banger_sys::net::nft::{BridgeRules, Nft};
use banger_sys::net::tap::{TapOptions, Taps};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What the network service is built from; the kernel-facing parts are
/// traits so unit tests run it on fakes.
pub struct NetworkDeps {
    pub config: Arc<Config>,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub store: Arc<Store>,
    pub links: Arc<dyn Links>,
    pub taps: Arc<dyn Taps>,
    pub runner: Arc<dyn Runner>,
    pub dns: Arc<dyn DnsServer>,
    /// Where the DNS server finds the VMs' names: readable by the
    /// unprivileged user dnsmasq drops to, so outside the owner-only state
    /// and runtime dirs (the names and addresses are no secret: anyone on
    /// the host can ask the DNS server for them).
    pub dns_hosts_dir: PathBuf,
    /// May this daemon make taps and bridges (root or CAP_NET_ADMIN)?
    pub privileged: bool,
}

/// Where a root daemon whose state dir is `state_dir` keeps its DNS names.
pub fn public_hosts_dir(state_dir: &std::path::Path) -> PathBuf {
    PathBuf::from("/run/banger-dns").join(&super::tap_pool::state_hash(state_dir)[..16])
}

/// The user dnsmasq runs as once it has bound its port.
pub const DNS_USER: &str = "nobody";

pub struct Network {
    deps: NetworkDeps,
    /// This instance's tap prefix (see `tap_pool::instance_prefix`).
    tap_prefix: String,
    /// The alias on each of its taps (see `tap_pool::owner_tag`).
    owner_tag: String,
    subnet: Ipv4Cidr,
    state: Mutex<BridgeState>,
    /// Tap deletions in flight (each takes ~20 ms, so off the caller's path).
    deleting: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The firewall script last installed, while the table is up: a VM
    /// with the config's policy changes nothing in it, and running `nft`
    /// again costs each attach and detach ~8 ms.
    installed_rules: Mutex<Option<String>>,
    /// The bridge's lock while this instance has the shared side up.
    claim: Mutex<Option<std::fs::File>>,
}

#[derive(Default)]
struct BridgeState {
    pool: TapPool,
    /// VM name → what it has on the bridge.
    attached: BTreeMap<String, Attached>,
    /// The number of the idle spell under way, if any: no VM attached,
    /// the shared side kept up until its timer ends it.
    idle: Option<u64>,
    /// Idle spells begun so far: a spell's timer acts only on its own.
    spells: u64,
}

/// A VM on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub tap: String,
    pub ip: Ipv4Addr,
    pub policy: Policy,
}

/// What a VM on the bridge may reach besides its peers and DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The outside limited to these networks (`None`: the config's egress).
    pub allow: Option<Vec<Ipv4Cidr>>,
    /// The host's own services.
    pub host_access: bool,
}

fn net_err(e: impl Into<NetError>) -> Error {
    Error::Network(e.into())
}

/// Whether `name` can be a tap banger made. Names from a scratch file are
/// checked before anything detaches or deletes them: a forged one could
/// name any interface, and the daemon may be root.
fn banger_tap(name: &str) -> bool {
    let ours = name.starts_with(super::tap_pool::TAP_PREFIX)
        && banger_sys::net::validate_ifname(name).is_ok();
    if !ours {
        tracing::warn!(tap = name, "ignoring a tap name that is not banger's");
    }
    ours
}

impl Network {
    pub fn new(deps: NetworkDeps) -> Result<Network, Error> {
        let subnet = ipam::parse_subnet(&deps.config.bridge_subnet)
            .map_err(|p| Error::invalid("bridge_subnet", p))?;
        Ok(Network {
            tap_prefix: super::tap_pool::instance_prefix(&deps.state_dir),
            owner_tag: super::tap_pool::owner_tag(&deps.state_dir),
            deps,
            subnet,
            state: Mutex::new(BridgeState::default()),
            deleting: Mutex::new(Vec::new()),
            installed_rules: Mutex::new(None),
            claim: Mutex::new(None),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BridgeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn config(&self) -> &Config {
        &self.deps.config
    }

    pub fn privileged(&self) -> bool {
        self.deps.privileged
    }

    /// The mode of a VM created without `--network`.
    pub fn default_mode(&self) -> NetworkMode {
        match self.deps.config.network {
            NetworkChoice::Auto => super::auto_mode(self.deps.privileged),
            NetworkChoice::Bridge => NetworkMode::Bridge,
            NetworkChoice::User => NetworkMode::User,
            NetworkChoice::None => NetworkMode::None,
        }
    }

    pub fn subnet(&self) -> Ipv4Cidr {
        self.subnet
    }

    pub fn gateway(&self) -> Ipv4Addr {
        ipam::gateway(self.subnet)
    }

    /// The name a bridge-mode VM answers to.
    pub fn dns_name(&self, vm: &str) -> String {
        format!("{vm}.{}", self.deps.config.dns_suffix)
    }

    pub fn hosts_dir(&self) -> PathBuf {
        self.deps.dns_hosts_dir.clone()
    }

    pub(crate) fn dnsmasq_config(&self) -> DnsmasqConfig {
        let mut cfg = DnsmasqConfig::new(
            self.gateway(),
            &self.deps.runtime_dir.join("dns"),
            &self.hosts_dir(),
        );
        cfg.suffix = self.deps.config.dns_suffix.clone();
        cfg.user = Some(DNS_USER.into());
        if self.deps.config.egress {
            cfg.upstreams = host_resolvers();
        }
        cfg
    }

    /// Leases the lowest free address to `vm` (a concurrent create may take
    /// the same one first: pick again).
    pub fn lease(&self, vm: &str) -> Result<Ipv4Addr, Error> {
        for _ in 0..8 {
            let ip = ipam::allocate(self.subnet, &self.deps.store.leased_ips()?).ok_or(
                Error::NoFreeAddress {
                    subnet: self.subnet,
                },
            )?;
            match self.deps.store.set_vm_ip(vm, Some(&ip.to_string())) {
                Err(StoreError::AddressTaken(_)) => continue,
                other => return other.map(|()| ip).map_err(Error::from),
            }
        }
        Err(StoreError::AddressTaken("any".into()).into())
    }

    pub fn release_lease(&self, vm: &str) {
        if let Err(e) = self.deps.store.set_vm_ip(vm, None) {
            tracing::warn!(vm, error = %crate::error::chain(&e), "cannot release the address lease");
        }
    }

    /// The guest's side of its lease, for the config drive.
    pub fn guest_network(&self, mac: &str, ip: Ipv4Addr) -> banger_proto::GuestNetwork {
        banger_proto::GuestNetwork {
            mac: mac.to_string(),
            address: format!("{ip}/{}", self.subnet.prefix()),
            gateway: Some(self.gateway().to_string()),
            dns: vec![self.gateway().to_string()],
            search: Some(self.deps.config.dns_suffix.clone()),
        }
    }

    /// The firewall for the VMs on the bridge now (see `banger_sys::net::nft`).
    fn apply_rules(&self, st: &BridgeState) -> Result<(), Error> {
        let cfg = &self.deps.config;
        let mut rules = BridgeRules::new(&cfg.nft_table, self.subnet, &cfg.bridge_name);
        rules.egress = cfg.egress;
        for a in st.attached.values() {
            if let Some(allow) = &a.policy.allow {
                rules.limited.push((a.ip, allow.clone()));
            }
            if a.policy.host_access {
                rules.host_access.push(a.ip);
            }
        }
        let script = banger_sys::net::nft::rules_script(&rules).map_err(net_err)?;
        let mut installed = self.installed_rules();
        if installed.as_deref() == Some(script.as_str()) {
            return Ok(());
        }
        *installed = None;
        Nft::new(&*self.deps.runner)
            .ensure_rules(&rules)
            .map_err(net_err)?;
        *installed = Some(script);
        Ok(())
    }

    pub(crate) fn forget_installed_rules(&self) {
        *self.installed_rules() = None;
    }

    fn installed_rules(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.installed_rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The lock file that makes the bridge this instance's: one per bridge
    /// name and network namespace, whatever the state dir.
    pub(crate) fn claim_path(&self) -> PathBuf {
        use std::os::unix::fs::MetadataExt;
        let netns = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
        let dir = self
            .deps
            .dns_hosts_dir
            .parent()
            .unwrap_or(&self.deps.dns_hosts_dir);
        dir.join(format!(
            "bridge-{}-{netns}.lock",
            self.deps.config.bridge_name
        ))
    }

    /// Makes the bridge this instance's (idempotent), or says whose it is.
    fn claim_bridge(&self) -> Result<(), Error> {
        use std::io::{Read, Seek, Write};
        let mut claim = self.claim.lock().unwrap_or_else(|p| p.into_inner());
        if claim.is_some() {
            return Ok(());
        }
        let path = self.claim_path();
        let dir_err = |source| {
            let path = path.clone();
            net_err(NetError::Dir { path, source })
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(dir_err)?;
        }
        match banger_sys::fs::lock_exclusive(&path) {
            Ok(mut f) => {
                let holder = format!(
                    "pid {}, state dir {}",
                    std::process::id(),
                    self.deps.state_dir.display()
                );
                f.set_len(0).map_err(dir_err)?;
                f.rewind()
                    .and_then(|()| f.write_all(holder.as_bytes()))
                    .map_err(dir_err)?;
                *claim = Some(f);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut holder = String::new();
                let _ = std::fs::File::open(&path)
                    .and_then(|f| f.take(512).read_to_string(&mut holder));
                Err(net_err(NetError::BridgeInUse {
                    bridge: self.deps.config.bridge_name.clone(),
                    holder: match holder.trim() {
                        "" => "unknown".into(),
                        h => h.to_string(),
                    },
                }))
            }
            Err(e) => Err(dir_err(e)),
        }
    }

    /// Who holds the bridge, when another instance does (read from
    /// `/proc/locks`, without taking the lock: a probe could refuse the
    /// holder's next VM).
    pub(crate) fn bridge_holder(&self) -> Option<String> {
        if self
            .claim
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return None;
        }
        let path = self.claim_path();
        banger_sys::fs::flock_held(&path).unwrap_or(false).then(|| {
            std::fs::read_to_string(&path)
                .ok()
                .map(|h| h.trim().chars().take(512).collect::<String>())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "unknown".into())
        })
    }

    /// Bridge, address, forwarding and DNS server, made idempotently.
    fn ensure_host(&self) -> Result<(), Error> {
        self.claim_bridge()?;
        let cfg = &self.deps.config;
        let links = &self.deps.links;
        let bridge = &cfg.bridge_name;
        links.ensure_bridge(bridge).map_err(net_err)?;
        let cidr = Ipv4Cidr::new(self.gateway(), self.subnet.prefix())
            .expect("a validated prefix is at most 32");
        links.ensure_ipv4(bridge, cidr).map_err(net_err)?;
        links.set_up(bridge).map_err(net_err)?;
        if cfg.egress
            && cfg.allow_ip_forward
            && !banger_sys::net::nft::ipv4_forwarding().unwrap_or(false)
        {
            banger_sys::net::nft::set_ipv4_forwarding(true).map_err(net_err)?;
        }
        let dns = self.dnsmasq_config();
        let dir_err = |path: &std::path::Path| {
            let path = path.to_owned();
            move |source| net_err(NetError::Dir { path, source })
        };
        let run = self.deps.runtime_dir.join("dns");
        std::fs::create_dir_all(&run).map_err(dir_err(&run))?;
        // Every directory above the hosts dir must let dnsmasq's user through.
        if let Some(parent) = dns.hosts_dir.parent() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(parent).map_err(dir_err(parent))?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
                .map_err(dir_err(parent))?;
        }
        dnsmasq::prepare_hosts_dir(&dns.hosts_dir).map_err(net_err)?;
        self.deps.dns.ensure_running(&dns).map_err(net_err)?;
        Ok(())
    }

    /// Puts `vm` on the bridge: the host side made ready, a tap from the
    /// pool (or made) joined to the bridge, the VM's name in DNS, the
    /// firewall with its policy. Returns the tap. On error nothing of this
    /// call is left.
    pub fn attach(&self, vm: &str, ip: Ipv4Addr, policy: Policy) -> Result<String, Error> {
        if !self.deps.privileged {
            return Err(Error::NeedsPrivilege {
                what: "bridge networking",
                hint: "run bangerd as root or use --network user",
            });
        }
        let mut st = self.state();
        st.idle = None;
        let result = self
            .ensure_host()
            .and_then(|()| self.join_bridge(&mut st, vm, ip));
        let result = result.and_then(|tap| {
            st.attached.insert(
                vm.to_string(),
                Attached {
                    tap: tap.clone(),
                    ip,
                    policy,
                },
            );
            match self.apply_rules(&st) {
                Ok(()) => Ok(tap),
                Err(e) => {
                    st.attached.remove(vm);
                    let _ = self.deps.links.detach(&tap);
                    let _ = dnsmasq::remove_host_entry(&self.hosts_dir(), vm);
                    self.delete_later(vec![tap]);
                    Err(e)
                }
            }
        });
        match result {
            Ok(tap) => {
                self.refill(&mut st);
                Ok(tap)
            }
            Err(e) => {
                if st.attached.is_empty() {
                    self.teardown_idle(&mut st);
                }
                Err(e)
            }
        }
    }

    /// A tap for `vm` on the bridge, with its DNS name; on error, the tap
    /// is gone again.
    fn join_bridge(&self, st: &mut BridgeState, vm: &str, ip: Ipv4Addr) -> Result<String, Error> {
        let links = &self.deps.links;
        let tap = match st.pool.take() {
            Some(t) if links.exists(&t).unwrap_or(false) => t,
            _ => self.make_tap()?,
        };
        let joined = links
            .attach(&tap, &self.deps.config.bridge_name)
            .and_then(|()| links.set_up(&tap))
            .map_err(net_err)
            .and_then(|()| dnsmasq::write_host_entry(&self.hosts_dir(), vm, ip).map_err(net_err));
        if let Err(e) = joined {
            let _ = links.detach(&tap);
            self.delete_later(vec![tap]);
            return Err(e);
        }
        Ok(tap)
    }

    /// The VM attached as `from` is now `to`: its DNS name follows (the
    /// tap, address and firewall stay). On error nothing changed.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        let mut st = self.state();
        let Some(ip) = st.attached.get(from).map(|a| a.ip) else {
            return Err(Error::Network(NetError::NoLease { vm: from.into() }));
        };
        dnsmasq::write_host_entry(&self.hosts_dir(), to, ip).map_err(net_err)?;
        if let Err(e) = dnsmasq::remove_host_entry(&self.hosts_dir(), from) {
            tracing::warn!(vm = from, error = %crate::error::chain(&e), "cannot remove the dns name");
        }
        let attached = st.attached.remove(from).expect("looked up above");
        st.attached.insert(to.to_string(), attached);
        if let Err(e) = self.apply_rules(&st) {
            tracing::warn!(error = %crate::error::chain(&e), "cannot update the bridge's firewall");
        }
        Ok(())
    }

    /// Takes `vm` off the bridge: its name leaves DNS and its tap goes back
    /// to the pool (or away). The last attached VM begins an idle spell.
    /// Idempotent.
    pub fn detach(self: &Arc<Self>, vm: &str, tap: Option<&str>) {
        let mut st = self.state();
        if let Err(e) = dnsmasq::remove_host_entry(&self.hosts_dir(), vm) {
            tracing::warn!(vm, error = %crate::error::chain(&e), "cannot remove the dns name");
        }
        match st.attached.remove(vm).map(|a| a.tap) {
            // A tap this service attached goes back to the pool (or away).
            Some(tap) => {
                let _ = self.deps.links.detach(&tap);
                if let Some(extra) = st.pool.offer(tap, self.deps.config.tap_pool_size) {
                    self.delete_later(vec![extra]);
                }
            }
            // One only a scratch file names (a boot before a daemon
            // restart) may already be on its way out: never pool it. And
            // the file may be forged: only a banger tap is touched.
            None => {
                if let Some(tap) = tap.filter(|t| !st.pool.contains(t) && banger_tap(t)) {
                    let _ = self.deps.links.detach(tap);
                    self.delete_later(vec![tap.to_string()]);
                }
            }
        }
        if st.attached.is_empty() && st.idle.is_none() {
            self.begin_idle(&mut st);
        }
        if (!st.attached.is_empty() || st.idle.is_some())
            && let Err(e) = self.apply_rules(&st)
        {
            tracing::warn!(error = %crate::error::chain(&e), "cannot update the bridge's firewall");
        }
    }

    /// The last VM left: keep the shared side for `bridge_idle_secs`, or
    /// take it down now when that is 0 (or there is none to keep).
    fn begin_idle(self: &Arc<Self>, st: &mut BridgeState) {
        let keep = std::time::Duration::from_secs(self.deps.config.bridge_idle_secs);
        if keep.is_zero() || !self.deps.privileged {
            self.teardown_idle(st);
            return;
        }
        st.spells += 1;
        let spell = st.spells;
        st.idle = Some(spell);
        let network = Arc::downgrade(self);
        std::thread::spawn(move || {
            std::thread::sleep(keep);
            if let Some(network) = network.upgrade() {
                network.end_idle(Some(spell));
            }
        });
    }

    /// Ends idle spell `spell` (any spell: `None`, at daemon shutdown),
    /// taking the shared side down if no VM came back meanwhile.
    pub fn end_idle(&self, spell: Option<u64>) {
        let mut st = self.state();
        let ours = st.idle.is_some_and(|i| spell.is_none_or(|n| n == i));
        if ours && st.attached.is_empty() {
            self.teardown_idle(&mut st);
        }
    }

    /// Whether an idle spell is under way.
    pub fn idling(&self) -> bool {
        self.state().idle.is_some()
    }

    /// No VM on the bridge: drop the idle pool and the shared side.
    fn teardown_idle(&self, st: &mut BridgeState) {
        st.idle = None;
        self.delete_later(st.pool.drain());
        self.remove_shared();
    }

    /// The table an older banger named with the 4-digit mark only, when
    /// this instance uses the default name now and the old table's rules
    /// are for this instance's bridge (another instance with the same mark
    /// has a bridge of its own).
    fn remove_legacy_table(&self) {
        let cfg = &self.deps.config;
        if cfg.nft_table != super::tap_pool::default_nft_table(&self.deps.state_dir) {
            return;
        }
        let legacy = super::tap_pool::legacy_nft_table(&self.deps.state_dir);
        let nft = Nft::new(&*self.deps.runner);
        let ours = match nft.status(&legacy) {
            Ok(banger_sys::net::nft::NatStatus::Present { listing }) => {
                listing.contains(&format!("iifname \"{}\"", cfg.bridge_name))
            }
            _ => false,
        };
        if ours {
            tracing::info!(table = %legacy, "removing the nat table an older banger named");
            if let Err(e) = nft.remove_nat(&legacy) {
                tracing::warn!(error = %crate::error::chain(&e), "cannot remove the old nat table");
            }
        }
    }

    /// The shared host side lives exactly as long as a bridge VM of this
    /// instance runs: with none, the NAT table, the DNS server and the
    /// bridge go (each best-effort and idempotent).
    pub(crate) fn remove_shared(&self) {
        *self.installed_rules() = None;
        if let Err(e) = Nft::new(&*self.deps.runner).remove_nat(&self.deps.config.nft_table) {
            tracing::warn!(error = %crate::error::chain(&e), "cannot remove the nat table");
        }
        if let Err(e) = self.deps.dns.stop(&self.dnsmasq_config()) {
            tracing::warn!(error = %crate::error::chain(&e), "cannot stop dnsmasq");
        }
        let bridge = &self.deps.config.bridge_name;
        if self.bridge_used_elsewhere() {
            tracing::info!(bridge = %bridge, "another instance's vms are on the bridge; leaving it");
        } else if self.deps.privileged
            && let Err(e) = self.deps.links.delete(bridge)
        {
            tracing::warn!(error = %crate::error::chain(&e), "cannot delete the bridge");
        }
        *self.claim.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether links of another instance (taps of another mark) are on a
    /// bridge of this one's name: then it is that instance's to remove.
    pub(crate) fn bridge_used_elsewhere(&self) -> bool {
        let bridge = self.deps.config.bridge_name.as_str();
        self.deps.links.list("").is_ok_and(|links| {
            links.iter().any(|l| {
                l.master.as_deref() == Some(bridge)
                    && !(l.name.starts_with(&self.tap_prefix) && self.owns(l))
            })
        })
    }

    /// Taps held by an attached VM or the pool, and whether the shared
    /// side should be down (no VM attached, no idle spell).
    pub(crate) fn held_taps(&self) -> (Vec<String>, bool) {
        let st = self.state();
        let mut held: Vec<String> = st.attached.values().map(|a| a.tap.clone()).collect();
        held.extend(st.pool.taps());
        (held, st.attached.is_empty() && st.idle.is_none())
    }

    /// The prefix of this instance's taps.
    pub fn tap_prefix(&self) -> &str {
        &self.tap_prefix
    }

    /// Tops the idle pool up to `tap_pool_size`.
    fn refill(&self, st: &mut BridgeState) {
        for _ in 0..st.pool.missing(self.deps.config.tap_pool_size) {
            match self.make_tap() {
                Ok(t) => {
                    st.pool.offer(t, usize::MAX);
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "cannot pre-create a tap");
                    break;
                }
            }
        }
    }

    /// A new tap of this instance: its prefix, labelled with its owner tag
    /// (or gone again).
    fn make_tap(&self) -> Result<String, Error> {
        let t = new_tap_name(&self.tap_prefix);
        self.deps
            .taps
            .create_tap(&t, &TapOptions::default())
            .map_err(net_err)?;
        if let Err(e) = self.deps.links.set_alias(&t, &self.owner_tag) {
            self.delete_later(vec![t]);
            return Err(net_err(e));
        }
        Ok(t)
    }

    /// Whether `link`, which carries this instance's prefix, is this
    /// instance's: its alias is this instance's owner tag, or it has none
    /// (a tap made before taps were labelled). Another instance whose mark
    /// is the same keeps its taps.
    pub(crate) fn owns(&self, link: &Link) -> bool {
        link.alias.as_deref().is_none_or(|a| a == self.owner_tag)
    }

    fn delete_later(&self, taps: Vec<String>) {
        if taps.is_empty() {
            return;
        }
        let links = self.deps.links.clone();
        let handle = std::thread::spawn(move || {
            for t in taps {
                if let Err(e) = links.delete(&t) {
                    tracing::warn!(tap = %t, error = %e, "cannot delete tap");
                }
            }
        });
        let mut pending = self.deleting.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|h| !h.is_finished());
        pending.push(handle);
    }

    /// Waits for tap deletions in flight (tests; daemon shutdown).
    pub fn settle(&self) {
        let pending = std::mem::take(&mut *self.deleting.lock().unwrap_or_else(|p| p.into_inner()));
        for h in pending {
            let _ = h.join();
        }
    }

    /// At daemon start: `live` are the bridge VMs still running; every other
    /// tap, DNS name and the NAT table (when none) are a killed daemon's
    /// leftovers.
    pub fn sweep(&self, live: &[(String, Attached)]) {
        if !self.deps.privileged {
            return;
        }
        let mut st = self.state();
        st.attached = live
            .iter()
            .filter(|(_, a)| banger_tap(&a.tap))
            .cloned()
            .collect();
        let in_use: Vec<&String> = st.attached.values().map(|a| &a.tap).collect();
        let stale: Vec<String> = self
            .deps
            .links
            .list(&self.tap_prefix)
            .unwrap_or_default()
            .into_iter()
            .filter(|l| self.owns(l))
            .map(|l| l.name)
            .filter(|n| !in_use.contains(&n))
            .collect();
        if !stale.is_empty() {
            tracing::info!(taps = ?stale, "removing taps no vm owns");
            self.delete_later(stale);
        }
        if let Ok(rd) = std::fs::read_dir(self.hosts_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && !live.iter().any(|(vm, _)| *vm == name) {
                    let _ = dnsmasq::remove_host_entry(&self.hosts_dir(), &name);
                }
            }
        }
        self.remove_legacy_table();
        if live.is_empty() {
            self.remove_shared();
            return;
        }
        if let Err(e) = self.claim_bridge() {
            tracing::warn!(error = %crate::error::chain(&e), "the bridge of this instance's vms");
        }
        if let Err(e) = self.apply_rules(&st) {
            tracing::warn!(error = %crate::error::chain(&e), "cannot restore the bridge's firewall");
        }
    }

    /// VMs on the bridge now.
    pub fn attached(&self) -> Vec<String> {
        self.state().attached.keys().cloned().collect()
    }

    pub(crate) fn links(&self) -> &dyn Links {
        &*self.deps.links
    }

    pub(crate) fn runner(&self) -> &dyn Runner {
        &*self.deps.runner
    }

    pub(crate) fn dns_server(&self) -> &dyn DnsServer {
        &*self.deps.dns
    }
}

/// The host's own resolvers (not loopback ones, which the guest cannot
/// reach through dnsmasq's view), as dnsmasq upstreams.
fn host_resolvers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_string())
        .filter(|s| s.parse::<Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))
        .collect()
}
