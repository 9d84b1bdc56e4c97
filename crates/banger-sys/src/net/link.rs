//! Links over rtnetlink: the bridge, its address, link state, which bridge
//! a tap belongs to, and listing what exists (to check that nothing was left
//! behind and to rebuild the tap pool after a daemon restart).
//!
//! [`Links`] is the small trait callers hold; [`NetlinkLinks`] is the real
//! one and [`crate::net::fake::FakeLinks`] the in-memory one for tests.
//!
//! ## Why not the `rtnetlink` crate
//!
//! Messages are built and parsed by `netlink-packet-route` (the typed
//! message layer `rtnetlink` itself is built on); only the transport is
//! ours: one blocking `netlink-sys` socket, a request, and a read loop until
//! the kernel's ACK or `NLMSG_DONE`. `rtnetlink` would add a tokio
//! connection task and an async API to a crate whose other primitives are
//! blocking and sub-millisecond, and its socket would belong to whichever
//! thread created the runtime's connection, which makes per-namespace use
//! (as the privileged tests do) awkward.
//!
//! ## A request, step by step
//!
//! 1. [`NetlinkLinks::new`] opens a `NETLINK_ROUTE` socket. The socket is in
//!    the network namespace of the thread that opened it, for its lifetime.
//! 2. Each request gets the next sequence number and `NLM_F_REQUEST |
//!    NLM_F_ACK` (plus `NLM_F_DUMP` for listings, `NLM_F_CREATE | ...` for
//!    creation).
//! 3. Replies with our sequence number are collected until an error message
//!    (code 0 is the ACK, a negative code is `-errno`) or `NLMSG_DONE`.
//!
//! Requests are serialised by a mutex: the daemon makes a handful per VM,
//! each well under a millisecond (deleting a link is the exception, ~20 ms,
//! which callers run in the background).

use std::io;
use std::net::IpAddr;
use std::sync::Mutex;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{IfNameError, Ipv4Cidr, MacAddr, validate_ifname};

/// What banger needs to know about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    /// The `IFLA_INFO_KIND`: `bridge`, `tun` (taps too), `veth`, …; `None`
    /// for physical devices and loopback.
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The bridge (or other master) the link is attached to.
    pub master: Option<String>,
    pub mac: Option<MacAddr>,
    /// The `IFLA_IFALIAS`, a free-form label: banger writes its owner tag
    /// there, so instances can tell their taps apart whatever their names.
    pub alias: Option<String>,
}

/// Link operations banger performs. Every method names links by name and
/// acts in the network namespace the implementation was created in.
pub trait Links: Send + Sync {
    /// Creates the bridge `name` unless a bridge of that name exists.
    fn ensure_bridge(&self, name: &str) -> Result<(), LinkError>;
    /// Adds `addr` (address and prefix) to `link` unless it is there already.
    fn ensure_ipv4(&self, link: &str, addr: Ipv4Cidr) -> Result<(), LinkError>;
    /// The IPv4 addresses on `link`.
    fn ipv4_addresses(&self, link: &str) -> Result<Vec<Ipv4Cidr>, LinkError>;
    /// Sets `link` administratively up.
    fn set_up(&self, link: &str) -> Result<(), LinkError>;
    /// Sets `link`'s alias (`ip link set LINK alias ALIAS`).
    fn set_alias(&self, link: &str, alias: &str) -> Result<(), LinkError>;
    /// Makes `link` a port of `bridge`.
    fn attach(&self, link: &str, bridge: &str) -> Result<(), LinkError>;
    /// Removes `link` from whatever bridge it is in.
    fn detach(&self, link: &str) -> Result<(), LinkError>;
    /// Deletes `link`; `Ok(false)` when there was no such link.
    fn delete(&self, link: &str) -> Result<bool, LinkError>;
    /// The link called `name`, if any.
    fn get(&self, name: &str) -> Result<Option<Link>, LinkError>;
    /// Every link whose name starts with `prefix`, sorted by name.
    fn list(&self, prefix: &str) -> Result<Vec<Link>, LinkError>;

    fn exists(&self, name: &str) -> Result<bool, LinkError> {
        Ok(self.get(name)?.is_some())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    InvalidName(#[from] IfNameError),
    #[error("cannot open a netlink socket")]
    Socket {
        #[source]
        source: io::Error,
    },
    #[error("{action} needs CAP_NET_ADMIN: run bangerd as root or use --network user")]
    PermissionDenied {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("link {name} does not exist")]
    NotFound { name: String },
    #[error(
        "{name} exists but is a {kind} device, not a {expected}: delete it or choose another name"
    )]
    WrongKind {
        name: String,
        kind: String,
        expected: &'static str,
    },
    #[error("{action} failed")]
    Netlink {
        action: String,
        #[source]
        source: io::Error,
    },
}

impl LinkError {
    fn from_io(action: String, source: io::Error) -> LinkError {
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                LinkError::PermissionDenied { action, source }
            }
            _ => LinkError::Netlink { action, source },
        }
    }
}

/// [`Links`] over a `NETLINK_ROUTE` socket.
pub struct NetlinkLinks {
    conn: Mutex<Conn>,
}

struct Conn {
    socket: Socket,
    sequence: u32,
}

impl NetlinkLinks {
    /// Opens the socket, in the calling thread's network namespace.
    pub fn new() -> Result<NetlinkLinks, LinkError> {
        let open = || -> io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            Ok(socket)
        };
        let socket = open().map_err(|source| LinkError::Socket { source })?;
        Ok(NetlinkLinks {
            conn: Mutex::new(Conn {
                socket,
                sequence: 0,
            }),
        })
    }

    /// Sends `message` and collects the replies (see the module doc).
    fn request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.sequence = conn.sequence.wrapping_add(1);
        let sequence = conn.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        conn.socket.send(&buf, 0)?;

        let mut replies = Vec::new();
        loop {
            let (datagram, _) = conn.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < datagram.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != sequence {
                    continue; // a late reply to an earlier, abandoned request
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(io::Error::other("netlink reply overran the socket buffer"));
                    }
                    _ => {}
                }
            }
        }
    }

    fn get_by(&self, message: LinkMessage) -> io::Result<Option<LinkMessage>> {
        match self.request(RouteNetlinkMessage::GetLink(message), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(m),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get_message(&self, name: &str) -> Result<Option<LinkMessage>, LinkError> {
        validate_ifname(name)?;
        let mut query = LinkMessage::default();
        query
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        self.get_by(query)
            .map_err(|e| LinkError::from_io(format!("looking up link {name}"), e))
    }

    fn name_of(&self, index: u32) -> Result<Option<String>, LinkError> {
        let mut query = LinkMessage::default();
        query.header.index = index;
        let found = self
            .get_by(query)
            .map_err(|e| LinkError::from_io(format!("looking up link #{index}"), e))?;
        Ok(found.and_then(|m| link_name(&m)))
    }

    fn index_of(&self, name: &str) -> Result<u32, LinkError> {
        match self.get_message(name)? {
            Some(m) => Ok(m.header.index),
            None => Err(LinkError::NotFound {
                name: name.to_string(),
            }),
        }
    }

    fn set_link(&self, action: String, message: LinkMessage) -> Result<(), LinkError> {
        self.request(RouteNetlinkMessage::SetLink(message), 0)
            .map(drop)
            .map_err(|e| LinkError::from_io(action, e))
    }

    fn set_master(&self, link: &str, master: u32, action: String) -> Result<(), LinkError> {
        let mut message = LinkMessage::default();
        message.header.index = self.index_of(link)?;
        message.attributes.push(LinkAttribute::Controller(master));
        self.set_link(action, message)
    }
}

impl Links for NetlinkLinks {
    fn ensure_bridge(&self, name: &str) -> Result<(), LinkError> {
        let check = |found: Link| match found.kind.as_deref() {
            Some("bridge") => Ok(()),
            other => Err(LinkError::WrongKind {
                name: name.to_string(),
                kind: other.unwrap_or("physical").to_string(),
                expected: "bridge",
            }),
        };
        if let Some(found) = self.get(name)? {
            return check(found);
        }
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        message
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        match self.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            // Someone else created it between the lookup and now.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => match self.get(name)? {
                Some(found) => check(found),
                None => Err(LinkError::from_io(format!("creating bridge {name}"), e)),
            },
            Err(e) => Err(LinkError::from_io(format!("creating bridge {name}"), e)),
        }
    }

    fn ensure_ipv4(&self, link: &str, addr: Ipv4Cidr) -> Result<(), LinkError> {
        let index = self.index_of(link)?;
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = addr.prefix();
        message.header.index = index;
        let ip = IpAddr::V4(addr.addr());
        message.attributes.push(AddressAttribute::Local(ip));
        message.attributes.push(AddressAttribute::Address(ip));
        if addr.prefix() <= 30 {
            message
                .attributes
                .push(AddressAttribute::Broadcast(addr.broadcast()));
        }
        // CREATE|REPLACE: adding an address that is already there succeeds.
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
        .map_err(|e| LinkError::from_io(format!("adding {addr} to {link}"), e))
    }

    fn ipv4_addresses(&self, link: &str) -> Result<Vec<Ipv4Cidr>, LinkError> {
        let index = self.index_of(link)?;
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Inet;
        let replies = self
            .request(RouteNetlinkMessage::GetAddress(query), NLM_F_DUMP)
            .map_err(|e| LinkError::from_io(format!("listing the addresses of {link}"), e))?;
        let mut found = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(m) = reply else {
                continue;
            };
            if m.header.index != index || m.header.family != AddressFamily::Inet {
                continue;
            }
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let address = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address)
                && let Ok(cidr) = Ipv4Cidr::new(ip, m.header.prefix_len)
            {
                found.push(cidr);
            }
        }
        Ok(found)
    }

    fn set_up(&self, link: &str) -> Result<(), LinkError> {
        let mut message = LinkMessage::default();
        message.header.index = self.index_of(link)?;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.set_link(format!("setting {link} up"), message)
    }

    fn set_alias(&self, link: &str, alias: &str) -> Result<(), LinkError> {
        let mut message = LinkMessage::default();
        message.header.index = self.index_of(link)?;
        message
            .attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.set_link(format!("labelling {link}"), message)
    }

    fn attach(&self, link: &str, bridge: &str) -> Result<(), LinkError> {
        let Some(found) = self.get(bridge)? else {
            return Err(LinkError::NotFound {
                name: bridge.to_string(),
            });
        };
        if found.kind.as_deref() != Some("bridge") {
            return Err(LinkError::WrongKind {
                name: bridge.to_string(),
                kind: found.kind.unwrap_or_else(|| "physical".to_string()),
                expected: "bridge",
            });
        }
        self.set_master(
            link,
            found.index,
            format!("attaching {link} to bridge {bridge}"),
        )
    }

    fn detach(&self, link: &str) -> Result<(), LinkError> {
        self.set_master(link, 0, format!("detaching {link} from its bridge"))
    }

    fn delete(&self, link: &str) -> Result<bool, LinkError> {
        validate_ifname(link)?;
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(link.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(message), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(LinkError::from_io(format!("deleting link {link}"), e)),
        }
    }

    fn get(&self, name: &str) -> Result<Option<Link>, LinkError> {
        let Some(message) = self.get_message(name)? else {
            return Ok(None);
        };
        let master = match master_index(&message) {
            Some(index) => self.name_of(index)?,
            None => None,
        };
        Ok(Some(to_link(&message, master)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Link>, LinkError> {
        let replies = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| LinkError::from_io("listing links".to_string(), e))?;
        let messages: Vec<LinkMessage> = replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(m),
                _ => None,
            })
            .collect();
        // The dump has every link, so masters resolve without more requests.
        let name_of = |index: u32| {
            messages
                .iter()
                .find(|m| m.header.index == index)
                .and_then(link_name)
        };
        let mut links: Vec<Link> = messages
            .iter()
            .filter(|m| link_name(m).is_some_and(|n| n.starts_with(prefix)))
            .map(|m| to_link(m, master_index(m).and_then(name_of)))
            .collect();
        links.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(links)
    }
}

fn link_name(message: &LinkMessage) -> Option<String> {
    message.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn master_index(message: &LinkMessage) -> Option<u32> {
    message.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) if *i != 0 => Some(*i),
        _ => None,
    })
}

fn to_link(message: &LinkMessage, master: Option<String>) -> Link {
    let kind = message.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        }),
        _ => None,
    });
    let mac = message.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
        _ => None,
    });
    let alias = message.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    });
    Link {
        name: link_name(message).unwrap_or_default(),
        index: message.header.index,
        kind,
        up: message.header.flags.contains(LinkFlags::Up),
        master,
        mac,
        alias,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_errors_say_what_to_do() {
        let err = LinkError::from_io(
            "creating bridge banger0".to_string(),
            io::Error::from_raw_os_error(libc::EPERM),
        );
        assert_eq!(
            err.to_string(),
            "creating bridge banger0 needs CAP_NET_ADMIN: run bangerd as root or use --network user"
        );
        let err = LinkError::from_io(
            "creating bridge banger0".to_string(),
            io::Error::from_raw_os_error(libc::ENOMEM),
        );
        assert_eq!(err.to_string(), "creating bridge banger0 failed");
    }

    #[test]
    fn link_messages_are_read_into_links() {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        m.attributes = vec![
            LinkAttribute::IfName("bgtap0".into()),
            LinkAttribute::Controller(3),
            LinkAttribute::Address(vec![0x52, 0x54, 0, 1, 2, 3]),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Tun)]),
            LinkAttribute::IfAlias("banger:abc".into()),
        ];
        assert_eq!(master_index(&m), Some(3));
        let link = to_link(&m, Some("banger0".into()));
        assert_eq!(
            link,
            Link {
                name: "bgtap0".into(),
                index: 7,
                kind: Some("tun".into()),
                up: true,
                master: Some("banger0".into()),
                mac: Some(MacAddr([0x52, 0x54, 0, 1, 2, 3])),
                alias: Some("banger:abc".into()),
            }
        );
    }

    #[test]
    fn names_are_validated_before_asking_the_kernel() {
        let links = NetlinkLinks::new().unwrap();
        assert!(matches!(
            links.get("a-name-longer-than-15"),
            Err(LinkError::InvalidName(_))
        ));
        assert!(matches!(
            links.delete("bad name"),
            Err(LinkError::InvalidName(_))
        ));
    }
}
