//! File sync: host files and directories named in the config's
//! `[[file_sync]]` list (credentials of the tools a VM runs, say) copied
//! into the guest's `/root` at every boot, create and start alike, through
//! the agent. The seed's semantics:
//!
//! - host `~/…` expands against the daemon user's `$HOME`; absolute host
//!   paths are used as they are;
//! - the guest path lives under `~/` or `/root/` (the work disk);
//! - validated at config load, errors naming the entry's index: empty
//!   paths, relative host paths, `..`, `~user/…`, guest paths elsewhere,
//!   malformed modes;
//! - a missing host path is skipped with a warning; any other error fails
//!   the boot (and so the create);
//! - a file gets `mode` (default 0600); a directory is copied recursively
//!   keeping its files' own modes, and `mode` does not apply to it.

use super::{Capability, Ctx};
use crate::agent::AgentConn;
use crate::error::Error;
use futures::future::BoxFuture;
use serde::Deserialize;
use std::path::{Component, Path, PathBuf};

/// One `[[file_sync]]` entry as written in the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSyncEntry {
    pub host: String,
    pub guest: String,
    #[serde(default)]
    pub mode: Option<String>,
}

/// Default mode of a synced file.
pub const DEFAULT_MODE: u32 = 0o600;

/// Checks every entry; the error names the entry (`file_sync[2].guest`)
/// and what is wrong with it.
pub fn validate(entries: &[FileSyncEntry]) -> Result<(), (String, String)> {
    for (i, e) in entries.iter().enumerate() {
        let key = |field: &str| format!("file_sync[{i}].{field}");
        check_host(&e.host).map_err(|p| (key("host"), p))?;
        check_guest(&e.guest).map_err(|p| (key("guest"), p))?;
        if let Some(m) = &e.mode {
            parse_mode(m).map_err(|p| (key("mode"), p))?;
        }
    }
    Ok(())
}

fn no_dot_dot(path: &str) -> Result<(), String> {
    if Path::new(path)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(format!("{path:?} must not contain '..'"));
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), String> {
    if host.trim().is_empty() {
        return Err("is empty: give an absolute path or one under ~/".into());
    }
    if host.starts_with('~') && !host.starts_with("~/") {
        return Err(format!(
            "{host:?}: ~user/ paths are not supported; write the absolute path"
        ));
    }
    if !host.starts_with('/') && !host.starts_with("~/") {
        return Err(format!(
            "{host:?} is relative: give an absolute path or one under ~/"
        ));
    }
    no_dot_dot(host)
}

fn check_guest(guest: &str) -> Result<(), String> {
    if guest.trim().is_empty() {
        return Err("is empty: give a path under ~/ or /root/".into());
    }
    if guest.starts_with('~') && !guest.starts_with("~/") {
        return Err(format!("{guest:?}: ~user/ paths are not supported"));
    }
    if !guest.starts_with("~/") && !guest.starts_with("/root/") {
        return Err(format!(
            "{guest:?} is outside the guest's /root: only ~/ and /root/ paths sync (the work disk)"
        ));
    }
    no_dot_dot(guest)?;
    if guest_path(guest) == "/root" {
        return Err(format!("{guest:?} is /root itself: name a path inside it"));
    }
    Ok(())
}

/// `0600`-style octal permissions.
pub fn parse_mode(mode: &str) -> Result<u32, String> {
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    if !(3..=4).contains(&digits.len()) || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!(
            "{mode:?} is not an octal mode like \"0600\" or \"0755\""
        ));
    }
    u32::from_str_radix(digits, 8).map_err(|e| e.to_string())
}

/// The guest path with `~/` spelled out as `/root/`, without a trailing slash.
pub fn guest_path(guest: &str) -> String {
    let p = match guest.strip_prefix("~/") {
        Some(rest) => format!("/root/{rest}"),
        None => guest.to_string(),
    };
    p.trim_end_matches('/').to_string()
}

/// The host path with `~/` expanded against `home`.
pub fn host_path(host: &str, home: &Path) -> PathBuf {
    match host.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None => PathBuf::from(host),
    }
}

pub struct FileSync {
    entries: Vec<FileSyncEntry>,
    home: PathBuf,
}

impl FileSync {
    pub fn new(entries: Vec<FileSyncEntry>, home: PathBuf) -> FileSync {
        FileSync { entries, home }
    }
}

impl Capability for FileSync {
    fn name(&self) -> &'static str {
        "file-sync"
    }

    fn applies(&self, _vm: &crate::store::VmRecord) -> bool {
        !self.entries.is_empty()
    }

    fn ready<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        agent: &'a AgentConn,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            for (i, e) in self.entries.iter().enumerate() {
                let host = host_path(&e.host, &self.home);
                let meta = match std::fs::metadata(&host) {
                    Ok(m) => m,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        tracing::warn!(vm = %ctx.vm.name, entry = i, host = %host.display(), "file_sync: host path does not exist; skipped");
                        continue;
                    }
                    Err(source) => {
                        return Err(Error::Io {
                            context: format!("file_sync[{i}]: cannot read {}", host.display()),
                            source,
                        });
                    }
                };
                let mode = match (&e.mode, meta.is_dir()) {
                    (Some(m), true) => {
                        tracing::warn!(vm = %ctx.vm.name, entry = i, mode = %m, "file_sync: mode applies to files only; a directory keeps its files' modes");
                        None
                    }
                    (Some(m), false) => Some(parse_mode(m).expect("validated at load")),
                    (None, true) => None,
                    (None, false) => Some(DEFAULT_MODE),
                };
                let guest = guest_path(&e.guest);
                agent
                    .put_path(&host, &guest, mode)
                    .await
                    .map_err(|source| Error::FileSync {
                        entry: i,
                        host: host.clone(),
                        guest: guest.clone(),
                        source,
                    })?;
                tracing::info!(vm = %ctx.vm.name, entry = i, host = %host.display(), %guest, "file_sync: copied");
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str, guest: &str, mode: Option<&str>) -> FileSyncEntry {
        FileSyncEntry {
            host: host.into(),
            guest: guest.into(),
            mode: mode.map(Into::into),
        }
    }

    #[test]
    fn good_entries_pass() {
        let ok = [
            entry(
                "~/.config/tool/auth.json",
                "~/.config/tool/auth.json",
                Some("0600"),
            ),
            entry("/etc/hosts", "/root/hosts", None),
            entry("~/.aws", "~/.aws", None),
            entry("~/bin/x", "~/bin/x", Some("755")),
        ];
        assert_eq!(validate(&ok), Ok(()));
    }

    #[test]
    fn each_bad_shape_names_its_entry_and_field() {
        let cases = [
            (entry("", "~/a", None), "file_sync[1].host", "empty"),
            (
                entry("rel/path", "~/a", None),
                "file_sync[1].host",
                "relative",
            ),
            (entry("~bob/x", "~/a", None), "file_sync[1].host", "~user"),
            (
                entry("~/a/../../etc", "~/a", None),
                "file_sync[1].host",
                "..",
            ),
            (entry("~/a", "", None), "file_sync[1].guest", "empty"),
            (
                entry("~/a", "/etc/passwd", None),
                "file_sync[1].guest",
                "outside",
            ),
            (entry("~/a", "~/../etc", None), "file_sync[1].guest", ".."),
            (entry("~/a", "~root/x", None), "file_sync[1].guest", "~user"),
            (
                entry("~/a", "/root/", None),
                "file_sync[1].guest",
                "/root itself",
            ),
            (
                entry("~/a", "~/a", Some("rw")),
                "file_sync[1].mode",
                "octal",
            ),
            (
                entry("~/a", "~/a", Some("0999")),
                "file_sync[1].mode",
                "octal",
            ),
            (
                entry("~/a", "~/a", Some("12345")),
                "file_sync[1].mode",
                "octal",
            ),
        ];
        for (bad, key, words) in cases {
            let list = [entry("~/ok", "~/ok", None), bad.clone()];
            let (k, problem) = validate(&list).unwrap_err();
            assert_eq!(k, key, "{bad:?}");
            assert!(problem.contains(words), "{bad:?}: {problem}");
        }
    }

    #[test]
    fn paths_expand() {
        assert_eq!(guest_path("~/.aws/"), "/root/.aws");
        assert_eq!(guest_path("/root/x"), "/root/x");
        assert_eq!(
            host_path("~/x", Path::new("/home/u")),
            Path::new("/home/u/x")
        );
        assert_eq!(parse_mode("0755"), Ok(0o755));
    }
}
