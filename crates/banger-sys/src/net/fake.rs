//! In-memory stand-ins for the kernel's links and taps, for unit tests of
//! the code that drives them (the tap pool, the network capability,
//! reconcile). [`FakeLinks`] implements both [`Links`] and [`Taps`] over one
//! table, so a tap the code under test creates shows up in `list`, can be
//! attached to a fake bridge, and is gone after `delete` — the same
//! observable behaviour as the real ones, with no privileges.
//!
//! It does not simulate timing, namespaces or permission errors; tests that
//! need a failure use [`FakeLinks::fail_next`].

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;

use super::link::{Link, LinkError, Links};
use super::tap::{TapError, TapOptions, Taps};
use super::{Ipv4Cidr, mac_from_id, validate_ifname};

#[derive(Debug, Clone)]
struct FakeLink {
    index: u32,
    kind: Option<String>,
    up: bool,
    master: Option<String>,
    addresses: Vec<Ipv4Cidr>,
    owner: Option<u32>,
    alias: Option<String>,
}

#[derive(Default)]
struct State {
    links: BTreeMap<String, FakeLink>,
    next_index: u32,
    fail_next: Option<i32>,
    /// Fail the next call that starts with this, with this errno.
    fail_call: Option<(String, i32)>,
    calls: Vec<String>,
}

/// Links and taps in memory; starts with `lo` only, as a new namespace does.
pub struct FakeLinks {
    state: Mutex<State>,
}

impl Default for FakeLinks {
    fn default() -> FakeLinks {
        FakeLinks::new()
    }
}

impl FakeLinks {
    pub fn new() -> FakeLinks {
        let fake = FakeLinks {
            state: Mutex::new(State {
                next_index: 1,
                ..State::default()
            }),
        };
        fake.insert("lo", None);
        fake
    }

    /// Adds a link of `kind` (`None` for a physical device) as if it existed.
    pub fn insert(&self, name: &str, kind: Option<&str>) {
        let mut s = self.lock();
        let index = s.next_index;
        s.next_index += 1;
        s.links.insert(
            name.to_string(),
            FakeLink {
                index,
                kind: kind.map(str::to_string),
                up: false,
                master: None,
                addresses: Vec::new(),
                owner: None,
                alias: None,
            },
        );
    }

    /// Makes the next operation fail with `errno` (`libc::EPERM`, …).
    pub fn fail_next(&self, errno: i32) {
        self.lock().fail_next = Some(errno);
    }

    /// Makes the next call that starts with `call` (`"attach"`,
    /// `"create_tap"`, …) fail with `errno`.
    pub fn fail_call(&self, call: &str, errno: i32) {
        self.lock().fail_call = Some((call.to_string(), errno));
    }

    /// Every mutating call so far, as `"attach bgtap0 banger0"` and so on.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The owner uid a tap was created with.
    pub fn tap_owner(&self, name: &str) -> Option<u32> {
        self.lock().links.get(name).and_then(|l| l.owner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `call` and returns the injected failure, if any.
    fn begin(&self, call: String) -> Option<io::Error> {
        let mut s = self.lock();
        let targeted = match &s.fail_call {
            Some((prefix, errno)) if call.starts_with(prefix.as_str()) => Some(*errno),
            _ => None,
        };
        s.calls.push(call);
        if let Some(errno) = targeted {
            s.fail_call = None;
            return Some(io::Error::from_raw_os_error(errno));
        }
        s.fail_next.take().map(io::Error::from_raw_os_error)
    }

    fn snapshot(name: &str, link: &FakeLink) -> Link {
        Link {
            name: name.to_string(),
            index: link.index,
            kind: link.kind.clone(),
            up: link.up,
            master: link.master.clone(),
            mac: Some(mac_from_id(name)),
            alias: link.alias.clone(),
        }
    }

    fn with_link<T>(&self, name: &str, f: impl FnOnce(&mut FakeLink) -> T) -> Result<T, LinkError> {
        let mut s = self.lock();
        match s.links.get_mut(name) {
            Some(link) => Ok(f(link)),
            None => Err(LinkError::NotFound {
                name: name.to_string(),
            }),
        }
    }
}

fn injected(action: String, e: io::Error) -> LinkError {
    match e.raw_os_error() {
        Some(libc::EPERM) => LinkError::PermissionDenied { action, source: e },
        _ => LinkError::Netlink { action, source: e },
    }
}

impl Links for FakeLinks {
    fn ensure_bridge(&self, name: &str) -> Result<(), LinkError> {
        validate_ifname(name)?;
        if let Some(e) = self.begin(format!("ensure_bridge {name}")) {
            return Err(injected(format!("creating bridge {name}"), e));
        }
        let existing = self.lock().links.get(name).map(|l| l.kind.clone());
        match existing {
            Some(Some(kind)) if kind == "bridge" => Ok(()),
            Some(kind) => Err(LinkError::WrongKind {
                name: name.to_string(),
                kind: kind.unwrap_or_else(|| "physical".to_string()),
                expected: "bridge",
            }),
            None => {
                self.insert(name, Some("bridge"));
                Ok(())
            }
        }
    }

    fn ensure_ipv4(&self, link: &str, addr: Ipv4Cidr) -> Result<(), LinkError> {
        if let Some(e) = self.begin(format!("ensure_ipv4 {link} {addr}")) {
            return Err(injected(format!("adding {addr} to {link}"), e));
        }
        self.with_link(link, |l| {
            if !l.addresses.contains(&addr) {
                l.addresses.push(addr);
            }
        })
    }

    fn ipv4_addresses(&self, link: &str) -> Result<Vec<Ipv4Cidr>, LinkError> {
        self.with_link(link, |l| l.addresses.clone())
    }

    fn set_up(&self, link: &str) -> Result<(), LinkError> {
        if let Some(e) = self.begin(format!("set_up {link}")) {
            return Err(injected(format!("setting {link} up"), e));
        }
        self.with_link(link, |l| l.up = true)
    }

    fn set_alias(&self, link: &str, alias: &str) -> Result<(), LinkError> {
        if let Some(e) = self.begin(format!("set_alias {link} {alias}")) {
            return Err(injected(format!("labelling {link}"), e));
        }
        self.with_link(link, |l| l.alias = Some(alias.to_string()))
    }

    fn attach(&self, link: &str, bridge: &str) -> Result<(), LinkError> {
        if let Some(e) = self.begin(format!("attach {link} {bridge}")) {
            return Err(injected(format!("attaching {link} to bridge {bridge}"), e));
        }
        let bridge_kind = self.with_link(bridge, |b| b.kind.clone())?;
        if bridge_kind.as_deref() != Some("bridge") {
            return Err(LinkError::WrongKind {
                name: bridge.to_string(),
                kind: bridge_kind.unwrap_or_else(|| "physical".to_string()),
                expected: "bridge",
            });
        }
        self.with_link(link, |l| l.master = Some(bridge.to_string()))
    }

    fn detach(&self, link: &str) -> Result<(), LinkError> {
        if let Some(e) = self.begin(format!("detach {link}")) {
            return Err(injected(format!("detaching {link} from its bridge"), e));
        }
        self.with_link(link, |l| l.master = None)
    }

    fn delete(&self, link: &str) -> Result<bool, LinkError> {
        validate_ifname(link)?;
        if let Some(e) = self.begin(format!("delete {link}")) {
            return Err(injected(format!("deleting link {link}"), e));
        }
        let mut s = self.lock();
        let removed = s.links.remove(link).is_some();
        // Deleting a bridge releases its ports, as the kernel does.
        for l in s.links.values_mut() {
            if l.master.as_deref() == Some(link) {
                l.master = None;
            }
        }
        Ok(removed)
    }

    fn get(&self, name: &str) -> Result<Option<Link>, LinkError> {
        validate_ifname(name)?;
        Ok(self
            .lock()
            .links
            .get(name)
            .map(|l| FakeLinks::snapshot(name, l)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Link>, LinkError> {
        Ok(self
            .lock()
            .links
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, l)| FakeLinks::snapshot(name, l))
            .collect())
    }
}

impl Taps for FakeLinks {
    fn create_tap(&self, name: &str, options: &TapOptions) -> Result<(), TapError> {
        validate_ifname(name)?;
        if let Some(source) = self.begin(format!("create_tap {name}")) {
            return Err(match source.raw_os_error() {
                Some(libc::EPERM) => TapError::PermissionDenied {
                    action: "creating",
                    name: name.to_string(),
                    source,
                },
                _ => TapError::Ioctl {
                    action: "creating",
                    name: name.to_string(),
                    source,
                },
            });
        }
        let existing = self.lock().links.get(name).map(|l| l.kind.clone());
        match existing {
            Some(Some(kind)) if kind == "tun" => {}
            Some(_) => {
                return Err(TapError::NotATap {
                    name: name.to_string(),
                    source: io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
            None => self.insert(name, Some("tun")),
        }
        let mut s = self.lock();
        if let Some(l) = s.links.get_mut(name) {
            l.owner = options.owner;
        }
        Ok(())
    }

    fn delete_tap(&self, name: &str) -> Result<(), TapError> {
        validate_ifname(name)?;
        if let Some(source) = self.begin(format!("delete_tap {name}")) {
            return Err(TapError::Ioctl {
                action: "deleting",
                name: name.to_string(),
                source,
            });
        }
        let mut s = self.lock();
        match s.links.get(name).map(|l| l.kind.as_deref() == Some("tun")) {
            Some(false) => Err(TapError::NotATap {
                name: name.to_string(),
                source: io::Error::from_raw_os_error(libc::EINVAL),
            }),
            Some(true) => {
                s.links.remove(name);
                Ok(())
            }
            None => Ok(()),
        }
    }
}
