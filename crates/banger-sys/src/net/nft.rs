//! The host side of `bridge` mode's firewall through nftables, in a table
//! banger owns alone (`table ip banger` unless configured otherwise): NAT
//! out, guests kept off the host, per-guest egress allow-lists; and the
//! IPv4 forwarding switch NAT depends on.
//!
//! Every change goes to the `nft` program as one script on stdin
//! (`nft -f -`), which nftables applies as a single transaction: either the
//! whole table is replaced or nothing changes. [`Nft::ensure_rules`] writes
//!
//! ```text
//! table ip banger {}            # create it if absent, so that
//! delete table ip banger        # deleting it cannot fail,
//! table ip banger {             # then define it from scratch
//!     chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 172.31.99.0/24 ip daddr != 172.31.99.0/24 oifname != "banger0" counter masquerade }
//!     chain input { type filter hook input priority filter; policy accept;
//!         iifname "banger0" ct state established,related accept
//!         iifname "banger0" ip daddr 172.31.99.1 udp dport 53 accept     # DNS on the bridge address
//!         iifname "banger0" ip daddr 172.31.99.1 tcp dport 53 accept
//!         iifname "banger0" ip daddr 172.31.99.1 icmp type echo-request accept
//!         iifname "banger0" counter drop }                                  # nothing else of the host
//!     set allow_0 { type ipv4_addr; flags interval; elements = { 10.1.0.0/16 } }
//!     chain forward { type filter hook forward priority filter; policy accept;
//!         oifname "banger0" ct state established,related counter accept
//!         iifname "banger0" ip daddr 169.254.0.0/16 counter drop           # no link-local metadata
//!         iifname "banger0" ip saddr 172.31.99.5 ip daddr != @allow_0 counter drop
//!         iifname "banger0" counter accept }                                # or drop without egress
//! }
//! ```
//!
//! Guests reach each other directly on the bridge (bridged frames do not
//! cross the IP hooks), DNS on the bridge address, and the outside when
//! egress is allowed (limited to a guest's allow-list when it has one).
//! Without egress the NAT chain is left out and forwarding from the bridge
//! is dropped; the input chain is there either way.
//!
//! so running it twice leaves the same table, and no other table is ever
//! named. [`Nft::remove_nat`] uses the same create-then-delete pair.
//!
//! The forward chain cannot override a drop in *another* table's forward
//! hook (each base chain votes separately in nftables; a drop anywhere
//! wins): a host whose firewall drops forwarded traffic (Docker sets the
//! iptables `FORWARD` policy to `DROP`) needs its own allowance for the
//! bridge, which `doctor` should point out. The counters make that visible.
//!
//! Driving `nft` through [`Runner`] keeps this testable with a fake; the
//! netlink nftables protocol by hand would be several hundred lines for
//! three scripts.

use std::io;
use std::path::Path;

use super::{IfNameError, Ipv4Cidr, validate_ifname};
use crate::command::{Cmd, CommandError, Runner};

/// The table banger uses when the configuration names none.
pub const DEFAULT_TABLE: &str = "banger";

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// What `nft` reports about banger's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatStatus {
    Absent,
    /// The table exists; `listing` is `nft list table ip <table>`'s output.
    Present {
        listing: String,
    },
}

impl NatStatus {
    pub fn is_present(&self) -> bool {
        matches!(self, NatStatus::Present { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables table name {table:?} {reason}")]
    InvalidTable { table: String, reason: &'static str },
    #[error(transparent)]
    InvalidName(#[from] IfNameError),
    #[error("{action} needs CAP_NET_ADMIN: run bangerd as root or use --network user")]
    PermissionDenied {
        action: String,
        #[source]
        source: CommandError,
    },
    #[error("{action} failed")]
    Failed {
        action: String,
        #[source]
        source: CommandError,
    },
}

impl NftError {
    fn from_command(action: String, source: CommandError) -> NftError {
        let denied = matches!(
            &source,
            CommandError::Failed { stderr_tail, .. } if stderr_tail.contains("Operation not permitted")
        );
        if denied {
            NftError::PermissionDenied { action, source }
        } else {
            NftError::Failed { action, source }
        }
    }
}

/// nftables through the `nft` program.
pub struct Nft<'r> {
    runner: &'r dyn Runner,
    program: String,
}

impl<'r> Nft<'r> {
    /// Runs `nft` from `PATH` through `runner`.
    pub fn new(runner: &'r dyn Runner) -> Nft<'r> {
        Nft {
            runner,
            program: "nft".to_string(),
        }
    }

    /// Uses `program` instead of `nft` from `PATH`.
    pub fn with_program(mut self, program: impl Into<String>) -> Nft<'r> {
        self.program = program.into();
        self
    }

    /// Replaces `table` with banger's NAT rules for `subnet` behind `bridge`
    /// and egress for everyone (see the module doc); idempotent.
    pub fn ensure_nat(&self, table: &str, subnet: Ipv4Cidr, bridge: &str) -> Result<(), NftError> {
        self.ensure_rules(&BridgeRules::new(table, subnet, bridge))
    }

    /// Replaces the table with `rules` (see the module doc); idempotent.
    pub fn ensure_rules(&self, rules: &BridgeRules) -> Result<(), NftError> {
        let script = rules_script(rules)?;
        self.apply(
            format!(
                "installing the bridge's rules in nftables table ip {}",
                rules.table
            ),
            script,
        )
    }

    /// Deletes `table` and only it; an absent table is not an error.
    pub fn remove_nat(&self, table: &str) -> Result<(), NftError> {
        let script = remove_script(table)?;
        self.apply(format!("removing nftables table ip {table}"), script)
    }

    /// Whether `table` exists, with its listing when it does.
    pub fn status(&self, table: &str) -> Result<NatStatus, NftError> {
        validate_table(table)?;
        let tables = self
            .run(
                format!("listing nftables tables for {table}"),
                Cmd::new(&self.program).args(["list", "tables", "ip"]),
            )?
            .stdout_lossy();
        let wanted = format!("table ip {table}");
        if !tables.lines().any(|l| l.trim() == wanted) {
            return Ok(NatStatus::Absent);
        }
        let listing = self
            .run(
                format!("listing nftables table ip {table}"),
                Cmd::new(&self.program).args(["list", "table", "ip", table]),
            )?
            .stdout_lossy();
        Ok(NatStatus::Present { listing })
    }

    fn apply(&self, action: String, script: String) -> Result<(), NftError> {
        let cmd = Cmd::new(&self.program).args(["-f", "-"]).stdin(script);
        self.run(action, cmd).map(drop)
    }

    fn run(&self, action: String, cmd: Cmd) -> Result<crate::command::Output, NftError> {
        self.runner
            .run(&cmd)
            .map_err(|e| NftError::from_command(action, e))
    }
}

/// Checks a table name against what nftables' parser takes as an
/// identifier (and keeps it safe to place in a script unquoted).
pub fn validate_table(table: &str) -> Result<(), NftError> {
    let reason = if table.is_empty() {
        "is empty"
    } else if table.len() > 64 {
        "is longer than 64 characters"
    } else if !table.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        "must start with a letter or '_'"
    } else if !table
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        "may only contain ASCII letters, digits, '_' and '-'"
    } else {
        return Ok(());
    };
    Err(NftError::InvalidTable {
        table: table.to_string(),
        reason,
    })
}

/// What the bridge's table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRules {
    pub table: String,
    pub subnet: Ipv4Cidr,
    pub bridge: String,
    /// May guests reach beyond the bridge at all?
    pub egress: bool,
    /// Guests limited to an allow-list: their address, and the networks
    /// they may reach (an empty list: none).
    pub limited: Vec<(std::net::Ipv4Addr, Vec<Ipv4Cidr>)>,
    /// Guests that may reach the host's own services.
    pub host_access: Vec<std::net::Ipv4Addr>,
}

impl BridgeRules {
    /// NAT and egress for every guest of `subnet` behind `bridge`.
    pub fn new(table: &str, subnet: Ipv4Cidr, bridge: &str) -> BridgeRules {
        BridgeRules {
            table: table.to_string(),
            subnet,
            bridge: bridge.to_string(),
            egress: true,
            limited: Vec::new(),
            host_access: Vec::new(),
        }
    }
}

/// The `nft -f -` script [`Nft::ensure_nat`] applies (with egress for all).
pub fn nat_script(table: &str, subnet: Ipv4Cidr, bridge: &str) -> Result<String, NftError> {
    rules_script(&BridgeRules::new(table, subnet, bridge))
}

/// The `nft -f -` script [`Nft::ensure_rules`] applies.
pub fn rules_script(r: &BridgeRules) -> Result<String, NftError> {
    let table = r.table.as_str();
    let bridge = r.bridge.as_str();
    validate_table(table)?;
    validate_ifname(bridge)?;
    let net = r.subnet.network();
    let gw = std::net::Ipv4Addr::from(u32::from(net.addr()) + 1);
    let mut out = format!("table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n");
    if r.egress {
        out.push_str(&format!(
            "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr {net} ip daddr != {net} oifname != \"{bridge}\" counter masquerade\n\t}}\n"
        ));
    }
    out.push_str(&format!(
        "\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{bridge}\" ct state established,related accept\n\
         \t\tiifname \"{bridge}\" ip daddr {gw} udp dport 53 accept\n\
         \t\tiifname \"{bridge}\" ip daddr {gw} tcp dport 53 accept\n\
         \t\tiifname \"{bridge}\" ip daddr {gw} icmp type echo-request accept\n"
    ));
    for ip in &r.host_access {
        out.push_str(&format!("\t\tiifname \"{bridge}\" ip saddr {ip} accept\n"));
    }
    out.push_str(&format!("\t\tiifname \"{bridge}\" counter drop\n\t}}\n"));
    for (i, (_, allowed)) in r.limited.iter().enumerate() {
        out.push_str(&format!(
            "\tset allow_{i} {{\n\t\ttype ipv4_addr; flags interval;\n"
        ));
        if !allowed.is_empty() {
            let list: Vec<String> = allowed.iter().map(|c| c.network().to_string()).collect();
            out.push_str(&format!("\t\telements = {{ {} }}\n", list.join(", ")));
        }
        out.push_str("\t}\n");
    }
    out.push_str(&format!(
        "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\toifname \"{bridge}\" ct state established,related counter accept\n\
         \t\tiifname \"{bridge}\" ip daddr 169.254.0.0/16 counter drop\n"
    ));
    for (i, (ip, _)) in r.limited.iter().enumerate() {
        out.push_str(&format!(
            "\t\tiifname \"{bridge}\" ip saddr {ip} ip daddr != @allow_{i} counter drop\n"
        ));
    }
    let verdict = if r.egress { "accept" } else { "drop" };
    out.push_str(&format!(
        "\t\tiifname \"{bridge}\" counter {verdict}\n\t}}\n}}\n"
    ));
    Ok(out)
}

/// The `nft -f -` script [`Nft::remove_nat`] applies.
pub fn remove_script(table: &str) -> Result<String, NftError> {
    validate_table(table)?;
    Ok(format!("table ip {table} {{}}\ndelete table ip {table}\n"))
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardingError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("changing {path} needs root: run bangerd as root or set net.ipv4.ip_forward yourself")]
    PermissionDenied {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Whether the calling thread's network namespace forwards IPv4
/// (`net.ipv4.ip_forward`); NAT'd guests reach nothing without it.
pub fn ipv4_forwarding() -> Result<bool, ForwardingError> {
    read_switch(Path::new(IP_FORWARD))
}

/// Turns IPv4 forwarding on or off in the calling thread's namespace.
pub fn set_ipv4_forwarding(on: bool) -> Result<(), ForwardingError> {
    write_switch(Path::new(IP_FORWARD), on)
}

fn read_switch(path: &Path) -> Result<bool, ForwardingError> {
    let text = std::fs::read_to_string(path).map_err(|source| ForwardingError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(text.trim() != "0")
}

fn write_switch(path: &Path, on: bool) -> Result<(), ForwardingError> {
    std::fs::write(path, if on { "1\n" } else { "0\n" }).map_err(|source| {
        let path = path.display().to_string();
        match source.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                ForwardingError::PermissionDenied { path, source }
            }
            _ => ForwardingError::Write { path, source },
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::command::Output;

    /// Answers from a closure and records each command with its stdin.
    struct FakeRunner<F> {
        answer: F,
        calls: Mutex<Vec<(String, String)>>,
    }

    impl<F: Fn(&Cmd) -> Result<Output, CommandError> + Send + Sync> FakeRunner<F> {
        fn new(answer: F) -> Self {
            FakeRunner {
                answer,
                calls: Mutex::new(Vec::new()),
            }
        }
    }

    impl<F: Fn(&Cmd) -> Result<Output, CommandError> + Send + Sync> Runner for FakeRunner<F> {
        fn run(&self, cmd: &Cmd) -> Result<Output, CommandError> {
            let stdin = String::from_utf8_lossy(cmd.stdin.as_deref().unwrap_or_default()).into();
            self.calls.lock().unwrap().push((cmd.to_string(), stdin));
            (self.answer)(cmd)
        }
    }

    fn ok(stdout: &str) -> Result<Output, CommandError> {
        Ok(Output {
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        })
    }

    fn subnet() -> Ipv4Cidr {
        "172.31.99.1/24".parse().unwrap()
    }

    #[test]
    fn nat_script_replaces_only_its_own_table_atomically() {
        let script = nat_script("banger", subnet(), "banger0").unwrap();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[0], "table ip banger {}");
        assert_eq!(lines[1], "delete table ip banger");
        assert_eq!(lines[2], "table ip banger {");
        assert!(
            script.contains(
                "ip saddr 172.31.99.0/24 ip daddr != 172.31.99.0/24 oifname != \"banger0\" counter masquerade"
            ),
            "{script}"
        );
        assert!(script.contains("type nat hook postrouting priority srcnat; policy accept;"));
        assert!(script.contains("type filter hook forward priority filter; policy accept;"));
        assert!(script.contains("iifname \"banger0\" counter accept"));
        assert!(script.contains("iifname \"banger0\" ip daddr 172.31.99.1 udp dport 53 accept"));
        assert!(
            script.contains("iifname \"banger0\" counter drop"),
            "the host is off limits"
        );
        assert!(
            script.contains("ip daddr 169.254.0.0/16 counter drop"),
            "no metadata"
        );
        // Every table the script names is banger's.
        for line in script.lines().filter(|l| l.contains("table")) {
            assert!(line.contains("table ip banger"), "{line}");
        }
    }

    #[test]
    fn without_egress_nothing_is_forwarded_and_allow_lists_limit_one_guest() {
        let mut r = BridgeRules::new("banger", subnet(), "banger0");
        r.egress = false;
        let script = rules_script(&r).unwrap();
        assert!(!script.contains("masquerade"), "{script}");
        assert!(
            script.contains("iifname \"banger0\" counter drop\n\t}\n}"),
            "{script}"
        );
        let mut r = BridgeRules::new("banger", subnet(), "banger0");
        r.limited = vec![
            (
                "172.31.99.5".parse().unwrap(),
                vec!["10.1.2.3/16".parse().unwrap()],
            ),
            ("172.31.99.6".parse().unwrap(), vec![]),
        ];
        let script = rules_script(&r).unwrap();
        assert!(
            script.contains(
                "set allow_0 {\n\t\ttype ipv4_addr; flags interval;\n\t\telements = { 10.1.0.0/16 }"
            ),
            "{script}"
        );
        assert!(
            script.contains("ip saddr 172.31.99.5 ip daddr != @allow_0 counter drop"),
            "{script}"
        );
        assert!(
            script.contains("ip saddr 172.31.99.6 ip daddr != @allow_1 counter drop"),
            "{script}"
        );
        r.host_access = vec!["172.31.99.7".parse().unwrap()];
        let script = rules_script(&r).unwrap();
        let open = script.find("ip saddr 172.31.99.7 accept").expect("opened");
        assert!(
            open < script.find("iifname \"banger0\" counter drop").unwrap(),
            "before the drop"
        );
    }

    #[test]
    fn remove_script_cannot_fail_on_an_absent_table() {
        assert_eq!(
            remove_script("banger_test").unwrap(),
            "table ip banger_test {}\ndelete table ip banger_test\n"
        );
    }

    #[test]
    fn unsafe_names_never_reach_a_script() {
        for bad in ["", "1abc", "a b", "a;b", "a}b", "x\ndelete table ip filter"] {
            assert!(
                matches!(validate_table(bad), Err(NftError::InvalidTable { .. })),
                "{bad:?}"
            );
        }
        assert!(validate_table("banger").is_ok());
        assert!(validate_table("banger-test_2").is_ok());
        assert!(matches!(
            nat_script("banger", subnet(), "br\"0"),
            Err(NftError::InvalidName(_))
        ));
    }

    #[test]
    fn ensure_nat_feeds_the_script_to_nft_on_stdin() {
        let runner = FakeRunner::new(|_| ok(""));
        Nft::new(&runner)
            .ensure_nat("banger", subnet(), "banger0")
            .unwrap();
        let calls = runner.calls.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "nft -f -");
        assert_eq!(
            calls[0].1,
            nat_script("banger", subnet(), "banger0").unwrap()
        );
    }

    #[test]
    fn status_reads_the_table_list() {
        let runner = FakeRunner::new(|cmd| match cmd.args_lossy()[1].as_str() {
            "tables" => ok("table ip filter\ntable ip banger\n"),
            _ => ok("table ip banger {\n}\n"),
        });
        let status = Nft::new(&runner).status("banger").unwrap();
        assert_eq!(
            status,
            NatStatus::Present {
                listing: "table ip banger {\n}\n".into()
            }
        );
        let absent = Nft::new(&runner).status("banger2").unwrap();
        assert_eq!(absent, NatStatus::Absent);
        assert!(!absent.is_present());
    }

    #[test]
    fn permission_failures_say_what_to_do() {
        let runner = FakeRunner::new(|cmd| {
            Err(CommandError::Failed {
                program: cmd.program.clone(),
                code: Some(1),
                signal: None,
                stderr_tail: "Error: Could not process rule: Operation not permitted".into(),
            })
        });
        let err = Nft::new(&runner).remove_nat("banger").unwrap_err();
        assert_eq!(
            err.to_string(),
            "removing nftables table ip banger needs CAP_NET_ADMIN: run bangerd as root or use --network user"
        );
        let missing = FakeRunner::new(|_| Err(CommandError::not_found("nft")));
        let err = Nft::new(&missing).remove_nat("banger").unwrap_err();
        assert_eq!(err.to_string(), "removing nftables table ip banger failed");
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert_eq!(source, "nft not found in PATH: install nftables");
    }

    #[test]
    fn forwarding_switch_reads_and_writes_the_sysctl_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ip_forward");
        std::fs::write(&path, "0\n").unwrap();
        assert!(!read_switch(&path).unwrap());
        write_switch(&path, true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        assert!(read_switch(&path).unwrap());
        let missing = dir.path().join("nope/ip_forward");
        assert!(matches!(
            read_switch(&missing),
            Err(ForwardingError::Read { .. })
        ));
    }
}
