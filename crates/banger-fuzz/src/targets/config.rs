//! `config`: the daemon's `config.toml` ([`banger_core::config::Config::parse`]),
//! `[[file_sync]]` entries included.
//!
//! Invariants: no panic; a config that parses holds values the rest of
//! the daemon relies on without checking again (sizes in range, a bridge
//! name the kernel takes, a subnet with room for a guest, a DNS label,
//! sync entries that stay inside the guest's `/root` with octal modes); an
//! error names the config file.

use super::{STRUCTURED, Target, mix, outcome_of};
use arbitrary::Unstructured;
use banger_core::capability::file_sync;
use banger_core::config::{Config, ConfigError, check_cpus, check_disk, check_memory};
use banger_core::net::ipam;
use std::fmt::Write;
use std::path::{Component, Path};

pub const TARGET: Target = Target {
    name: "config",
    about: "config.toml parsing and validation, [[file_sync]] included",
    run,
    max_len: 4096,
    dictionary: &[
        b"\n",
        b" = ",
        b"\"",
        b"'''",
        b"[[file_sync]]\n",
        b"[file_sync]\n",
        b"host = ",
        b"guest = ",
        b"mode = ",
        b"default_cpus",
        b"bridge_name",
        b"bridge_subnet",
        b"dns_suffix",
        b"nft_table",
        b"tap_pool_size",
        b"bridge_idle_secs",
        b"accel",
        b"network",
        b"~/",
        b"/root/",
        b"..",
        b"0o",
        b"9223372036854775808",
        b"-1",
        b"inf",
        b"nan",
        b"1979-05-27T07:32:00Z",
    ],
};

const PATH: &str = "/etc/banger/config.toml";

/// Keys of `Config`, and a stranger.
const KEYS: &[&str] = &[
    "accel",
    "qemu_bin",
    "agent_bin",
    "default_image",
    "default_cpus",
    "default_memory_mib",
    "default_disk_size_mib",
    "boot_timeout_secs",
    "stop_timeout_secs",
    "network",
    "bridge_name",
    "bridge_subnet",
    "dns_suffix",
    "nft_table",
    "tap_pool_size",
    "bridge_idle_secs",
    "allow_ip_forward",
    "egress",
    "ssh_key",
    "surprise",
];

/// TOML values near each key's rules.
const VALUES: &[&str] = &[
    "0",
    "1",
    "64",
    "65",
    "63",
    "4096",
    "3600",
    "3601",
    "-1",
    "9223372036854775807",
    "true",
    "1.5",
    "\"auto\"",
    "\"kvm\"",
    "\"tcg\"",
    "\"bridge\"",
    "\"user\"",
    "\"none\"",
    "\"wifi\"",
    "\"banger0\"",
    "\"a-very-long-bridge\"",
    "\"br.0\"",
    "\"\"",
    "\"172.30.0.0/24\"",
    "\"10.0.0.0/8\"",
    "\"10.9.0.0/30\"",
    "\"10.9.0.0/31\"",
    "\"300.0.0.0/24\"",
    "\"banger\"",
    "\"-x\"",
    "\"Debian\"",
    "\"/usr/bin/qemu\"",
    "[]",
    "[1]",
    "{ a = 1 }",
];

/// Paths near the `[[file_sync]]` rules.
const SYNC_PATHS: &[&str] = &[
    "~/.config/gh",
    "/home/u/.aws",
    "relative",
    "~",
    "~/",
    "~user/x",
    "/root",
    "/root/",
    "/root/.ssh/config",
    "~/../etc",
    "/root/a/../../etc",
    "/etc/passwd",
    "",
    "  ",
    "/root//x",
    "~/.",
    "/root/./",
];

const MODES: &[&str] = &[
    "0600", "0o755", "600", "06000", "0888", "07777", "0o", "", "+x",
];

pub fn run(data: &[u8]) -> u64 {
    let text = match data.split_first() {
        Some((&STRUCTURED, rest)) => build(&mut Unstructured::new(rest)),
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    check(&text)
}

pub fn check(text: &str) -> u64 {
    match Config::parse(Path::new(PATH), text) {
        Ok(cfg) => {
            check_config(&cfg);
            mix(1, cfg.file_sync.len().min(4) as u64)
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(PATH), "{message:?} does not name the file");
            match e {
                // The reason alone, without the snippet of input TOML
                // puts in front of it.
                ConfigError::Parse { .. } => match toml::from_str::<Config>(text) {
                    Err(e) => outcome_of(e.message()),
                    Ok(_) => unreachable!("the config parsed once already"),
                },
                ConfigError::Invalid { key, problem, .. } => {
                    mix(outcome_of(&key), outcome_of(&problem))
                }
                ConfigError::Read { .. } => unreachable!("parse reads no file"),
            }
        }
    }
}

fn check_config(cfg: &Config) {
    assert!(check_cpus(cfg.default_cpus).is_ok());
    assert!(check_memory(cfg.default_memory_mib).is_ok());
    assert!(check_disk(cfg.default_disk_size_mib).is_ok());
    assert!(
        banger_sys::net::validate_ifname(&cfg.bridge_name).is_ok(),
        "bridge_name {:?} is not an interface name",
        cfg.bridge_name
    );
    let subnet = ipam::parse_subnet(&cfg.bridge_subnet).expect("the subnet was validated");
    assert!(
        ipam::allocate(subnet, &[]).is_some(),
        "{subnet} has no room for a guest"
    );
    assert!(banger_api::validate_vm_name(&cfg.dns_suffix).is_ok());
    assert!(banger_api::validate_image_name(&cfg.default_image).is_ok());
    assert!(cfg.tap_pool_size <= 64);
    assert!(cfg.bridge_idle_secs <= banger_core::config::MAX_BRIDGE_IDLE_SECS);
    for e in &cfg.file_sync {
        let guest = file_sync::guest_path(&e.guest);
        assert!(
            guest.starts_with("/root/"),
            "guest path {guest:?} escapes /root"
        );
        assert!(
            !Path::new(&guest)
                .components()
                .any(|c| c == Component::ParentDir),
            "guest path {guest:?} climbs out"
        );
        assert!(e.host.starts_with('/') || e.host.starts_with("~/"));
        assert!(
            !Path::new(&e.host)
                .components()
                .any(|c| c == Component::ParentDir)
        );
        if let Some(m) = &e.mode {
            let mode = file_sync::parse_mode(m).expect("the mode was validated");
            assert!(mode <= 0o7777, "mode {m:?} is {mode:#o}");
        }
    }
}

/// A config from `arbitrary`: known keys with values near their rules,
/// then `[[file_sync]]` tables.
fn build(u: &mut Unstructured) -> String {
    let mut out = String::new();
    let lines = u.int_in_range(0..=6).unwrap_or(0);
    for _ in 0..lines {
        let key = u.choose(KEYS).unwrap_or(&"accel");
        let value = if u.ratio(1, 8).unwrap_or(false) {
            format!("{:?}", u.arbitrary::<String>().unwrap_or_default())
        } else {
            u.choose(VALUES).unwrap_or(&"0").to_string()
        };
        let _ = writeln!(out, "{key} = {value}");
    }
    let tables = u.int_in_range(0..=3).unwrap_or(0);
    for _ in 0..tables {
        out.push_str("[[file_sync]]\n");
        for field in ["host", "guest", "mode"] {
            if u.ratio(1, 8).unwrap_or(false) {
                continue;
            }
            let choices = if field == "mode" { MODES } else { SYNC_PATHS };
            let value = u.choose(choices).unwrap_or(&"");
            let _ = writeln!(out, "{field} = {value:?}");
        }
        if u.ratio(1, 16).unwrap_or(false) {
            out.push_str("surprise = 1\n");
        }
    }
    out
}
