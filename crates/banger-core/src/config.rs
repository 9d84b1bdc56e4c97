//! The daemon's configuration file (`config.toml`): every key optional,
//! unknown keys rejected, values validated at load with errors that name the
//! key. Owns parsing and defaults; not where the file lives (that is
//! `banger_api::paths`).

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// How the QEMU engine accelerates guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// Probe `/dev/kvm` once (cached) and use it only when it boots a kernel.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The default network mode of new VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkChoice {
    /// `bridge` when the daemon may create taps (root or CAP_NET_ADMIN), else `user`.
    #[default]
    Auto,
    Bridge,
    User,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub accel: AccelChoice,
    /// QEMU binary; `qemu-system-x86_64` from PATH by default.
    pub qemu_bin: PathBuf,
    /// The guest agent binary put into images; found next to `bangerd` when unset.
    pub agent_bin: Option<PathBuf>,
    /// Image used when `--image` is not given.
    pub default_image: String,
    pub default_cpus: u32,
    pub default_memory_mib: u64,
    pub default_disk_size_mib: u64,
    /// Seconds to wait for the guest agent after the engine starts.
    pub boot_timeout_secs: u64,
    /// Seconds a graceful stop may take before the engine is killed.
    pub stop_timeout_secs: u64,
    /// Network mode of VMs created without `--network`.
    pub network: NetworkChoice,
    /// Bridge of bridge mode (at most 15 characters).
    pub bridge_name: String,
    /// IPv4 subnet of the bridge, CIDR; the bridge takes the first address.
    pub bridge_subnet: String,
    /// DNS suffix: VMs resolve as `<name>.<suffix>`.
    pub dns_suffix: String,
    /// nftables table banger owns for NAT (no other table is touched);
    /// empty: `banger_` and the instance's mark ([`Config::for_instance`]),
    /// so instances sharing a network namespace never touch each other's.
    pub nft_table: String,
    /// Taps kept ready for bridge-mode VMs.
    pub tap_pool_size: usize,
    /// Seconds the bridge's shared host side (bridge, DNS server, NAT
    /// table) stays up after the last bridge VM goes; 0: it goes at once.
    pub bridge_idle_secs: u64,
    /// Keep the next VM of a warm image made ahead and paused (a standby,
    /// `vm/standby.rs`), so a warm create only resumes it?
    pub warm_standby: bool,
    /// May banger turn on IPv4 forwarding (needed for NAT out of the bridge)?
    pub allow_ip_forward: bool,
    /// May guests reach the outside world (user mode's `restrict=off`, bridge NAT)?
    pub egress: bool,
    /// Private key `vm ssh` uses; generated under the state dir when unset.
    pub ssh_key: Option<PathBuf>,
    /// Host files copied into each guest at every boot.
    pub file_sync: Vec<crate::capability::file_sync::FileSyncEntry>,
    /// A root daemon: the group whose members may use its API besides root.
    pub api_group: Option<String>,
    /// Keep address-space randomisation on in guests under TCG (it costs
    /// every dynamically linked exec ~20 ms there; KVM guests always
    /// have it).
    pub tcg_aslr: bool,
    /// The web page's port on 127.0.0.1 (`banger web`); 0: a free one,
    /// picked when it is first asked for.
    pub web_port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            accel: AccelChoice::Auto,
            qemu_bin: PathBuf::from("qemu-system-x86_64"),
            agent_bin: None,
            default_image: "debian".into(),
            default_cpus: 1,
            default_memory_mib: 512,
            default_disk_size_mib: 4096,
            boot_timeout_secs: 60,
            stop_timeout_secs: 10,
            network: NetworkChoice::Auto,
            bridge_name: "banger0".into(),
            bridge_subnet: "172.30.0.0/24".into(),
            dns_suffix: "banger".into(),
            nft_table: String::new(),
            tap_pool_size: 2,
            bridge_idle_secs: 30,
            warm_standby: true,
            allow_ip_forward: false,
            egress: true,
            ssh_key: None,
            file_sync: Vec::new(),
            api_group: None,
            tcg_aslr: false,
            web_port: 0,
        }
    }
}

/// Limits shared by config validation and request validation.
pub const MAX_CPUS: u32 = 64;
pub const MIN_MEMORY_MIB: u64 = 64;
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
pub const MIN_DISK_MIB: u64 = 64;
pub const MAX_DISK_MIB: u64 = 16 * 1024 * 1024;
pub const MAX_BRIDGE_IDLE_SECS: u64 = 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is malformed: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key} {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// A TOML error as one line: where (`line 3, column 1`), what, and for an
/// unknown key the known one it is closest to.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim().replace('\n', " ");
    let mut message = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - start + 1;
            // The key whose value it is, when the message does not say.
            let source = text[start..].lines().next().unwrap_or_default();
            match source.split_once('=').map(|(k, _)| k.trim()) {
                Some(key) if !key.is_empty() && !what.contains(key) => {
                    format!("line {line}, column {column} ({key}): {what}")
                }
                _ => format!("line {line}, column {column}: {what}"),
            }
        }
        None => what.clone(),
    };
    if let Some(close) = closest_key(&what) {
        message.push_str(&format!(" (did you mean `{close}`?)"));
    }
    message
}

/// For serde's "unknown field `x`, expected one of `a`, `b`", the expected
/// name within two edits of `x`, if one is.
fn closest_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    rest.split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

impl Config {
    /// Fills what defaults to this instance's own (the nftables table)
    /// for the instance whose state dir is `state_dir`.
    pub fn for_instance(mut self, state_dir: &Path) -> Config {
        if self.nft_table.is_empty() {
            self.nft_table = crate::net::tap_pool::default_nft_table(state_dir);
        }
        self
    }

    /// Loads `path`; a missing file means all defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe(text, &e),
        })?;
        cfg.validate()
            .map_err(|(key, problem)| ConfigError::Invalid {
                path: path.to_owned(),
                key: key.to_string(),
                problem,
            })?;
        crate::capability::file_sync::validate(&cfg.file_sync).map_err(|(key, problem)| {
            ConfigError::Invalid {
                path: path.to_owned(),
                key,
                problem,
            }
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        check_cpus(self.default_cpus).map_err(|p| ("default_cpus", p))?;
        check_memory(self.default_memory_mib).map_err(|p| ("default_memory_mib", p))?;
        check_disk(self.default_disk_size_mib).map_err(|p| ("default_disk_size_mib", p))?;
        if self.boot_timeout_secs == 0 || self.boot_timeout_secs > 3600 {
            return Err(("boot_timeout_secs", "must be between 1 and 3600".into()));
        }
        if self.stop_timeout_secs > 3600 {
            return Err(("stop_timeout_secs", "must be at most 3600".into()));
        }
        banger_api::validate_image_name(&self.default_image).map_err(|p| ("default_image", p))?;
        if self.bridge_name.is_empty()
            || self.bridge_name.len() > 15
            || !self
                .bridge_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err((
                "bridge_name",
                format!(
                    "{:?} must be 1-15 letters, digits, '-' or '_' (a Linux interface name)",
                    self.bridge_name
                ),
            ));
        }
        crate::net::ipam::parse_subnet(&self.bridge_subnet).map_err(|p| ("bridge_subnet", p))?;
        banger_api::validate_vm_name(&self.dns_suffix).map_err(|_| {
            (
                "dns_suffix",
                format!(
                    "{:?} must be a DNS label: lowercase letters, digits and '-'",
                    self.dns_suffix
                ),
            )
        })?;
        if !self
            .nft_table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err((
                "nft_table",
                format!("{:?} must be letters, digits, '-' or '_'", self.nft_table),
            ));
        }
        if let Some(g) = &self.api_group
            && (g.is_empty()
                || g.len() > 32
                || !g
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b)))
        {
            return Err(("api_group", format!("{g:?} is not a group name")));
        }
        if self.tap_pool_size > 64 {
            return Err(("tap_pool_size", "must be at most 64".into()));
        }
        if self.bridge_idle_secs > MAX_BRIDGE_IDLE_SECS {
            return Err((
                "bridge_idle_secs",
                format!("must be at most {MAX_BRIDGE_IDLE_SECS} (a day)"),
            ));
        }
        Ok(())
    }
}

pub fn check_cpus(n: u32) -> Result<(), String> {
    if n == 0 || n > MAX_CPUS {
        return Err(format!("must be between 1 and {MAX_CPUS} (got {n})"));
    }
    Ok(())
}

pub fn check_memory(mib: u64) -> Result<(), String> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(format!(
            "must be between {MIN_MEMORY_MIB} MiB and {} GiB (got {mib} MiB)",
            MAX_MEMORY_MIB / 1024
        ));
    }
    Ok(())
}

pub fn check_disk(mib: u64) -> Result<(), String> {
    if !(MIN_DISK_MIB..=MAX_DISK_MIB).contains(&mib) {
        return Err(format!(
            "must be between {MIN_DISK_MIB} MiB and {} TiB (got {mib} MiB)",
            MAX_DISK_MIB / 1024 / 1024
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/c.toml"), text)
    }

    #[test]
    fn a_malformed_file_is_named_by_line_with_the_key_it_likely_meant() {
        let err = parse("network = \"none\"\ndefault_memory_mb = 512\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "config /c.toml is malformed: line 2, column 1: unknown field `default_memory_mb`"
            ),
            "{err}"
        );
        assert!(
            err.ends_with("(did you mean `default_memory_mib`?)"),
            "{err}"
        );
        assert!(!err.contains('|'), "no source excerpt: {err}");
        let err = parse("default_memory_mib = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "line 1, column 22 (default_memory_mib): invalid type: string \"lots\", expected u64"
            ),
            "{err}"
        );
        assert!(!err.contains("did you mean"), "{err}");
        let err = parse("colour = 1\n").unwrap_err().to_string();
        assert!(!err.contains("did you mean"), "nothing close: {err}");
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn keys_override_defaults() {
        let cfg = parse("accel = \"tcg\"\ndefault_cpus = 2\n").unwrap();
        assert_eq!(cfg.accel, AccelChoice::Tcg);
        assert_eq!(cfg.default_cpus, 2);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("acel = \"kvm\"").unwrap_err().to_string();
        assert!(err.contains("acel"), "{err}");
    }

    #[test]
    fn bad_accel_value_is_rejected() {
        let err = parse("accel = \"fast\"").unwrap_err().to_string();
        assert!(err.contains("fast") || err.contains("accel"), "{err}");
    }

    #[test]
    fn absurd_values_name_their_key() {
        let err = parse("default_memory_mib = 1").unwrap_err().to_string();
        assert!(
            err.contains("default_memory_mib") && err.contains("between"),
            "{err}"
        );
        let err = parse("default_cpus = 0").unwrap_err().to_string();
        assert!(err.contains("default_cpus"), "{err}");
    }

    #[test]
    fn network_keys_are_validated_by_name() {
        assert_eq!(
            parse("network = \"user\"").unwrap().network,
            NetworkChoice::User
        );
        let err = parse("bridge_name = \"a-very-long-bridge-name\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bridge_name"), "{err}");
        let err = parse("bridge_subnet = \"10.0.0.0/33\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bridge_subnet"), "{err}");
        let err = parse("dns_suffix = \"Bad.Suffix\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dns_suffix"), "{err}");
    }

    #[test]
    fn file_sync_entries_load_and_bad_ones_name_their_index() {
        let cfg = parse(
            "[[file_sync]]\nhost = \"~/.config/tool/auth.json\"\nguest = \"~/.config/tool/auth.json\"\nmode = \"0600\"\n",
        )
        .unwrap();
        assert_eq!(cfg.file_sync.len(), 1);
        let err = parse(
            "[[file_sync]]\nhost = \"/a\"\nguest = \"~/a\"\n[[file_sync]]\nhost = \"/b\"\nguest = \"/etc/b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("file_sync[1].guest"), "{err}");
        let err = parse("[[file_sync]]\nhost = \"/a\"\nguest = \"~/a\"\nowner = \"me\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("owner"), "{err}");
    }

    #[test]
    fn missing_file_is_defaults() {
        assert_eq!(
            Config::load(Path::new("/nonexistent/banger.toml")).unwrap(),
            Config::default()
        );
    }
}
