//! Where banger keeps its files, shared by the CLI and the daemon so both
//! agree on the socket without talking. Every root honours its XDG variable,
//! so tests and users can run fully isolated instances side by side.
//!
//! | what | variable | fallback |
//! |---|---|---|
//! | config | `$XDG_CONFIG_HOME/banger/config.toml` | `~/.config/banger/config.toml` |
//! | state (store, images, VMs) | `$XDG_STATE_HOME/banger` | `/var/lib/banger` for root, else `~/.local/state/banger` |
//! | runtime (sockets) | `$XDG_RUNTIME_DIR/banger` | `/run/banger` for root, else `/tmp/banger-<uid>` |
//! | cache (downloaded packages) | `$XDG_CACHE_HOME/banger` | `/var/cache/banger` for root, else `~/.cache/banger` |
//!
//! The state, runtime and cache directories are the user's alone: both
//! sides make them mode 0700 and refuse one that is a symlink or another
//! user's ([`Paths::private_dirs`]; the check is `banger_sys::private_dir`'s).
//! The runtime fallback sits in the shared `/tmp`, where another user could
//! make it first. A relative XDG value is ignored, as the XDG spec says: it
//! would name a different directory from every working directory.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub config_file: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub cache_dir: PathBuf,
}

/// One of [`Paths::private_dirs`], with what to call it in an error and the
/// variable that moves it (what to do when it cannot be used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateDir<'a> {
    pub path: &'a Path,
    pub what: &'static str,
    pub var: &'static str,
}

impl PrivateDir<'_> {
    /// The context of an error about this directory, e.g. "cannot use the
    /// runtime directory (or set XDG_RUNTIME_DIR to one of your own)".
    pub fn refusal(&self) -> String {
        format!(
            "cannot use the {} (or set {} to a directory of your own)",
            self.what, self.var
        )
    }
}

impl Paths {
    /// Resolves the layout from an environment lookup, the user's home and uid.
    pub fn resolve(env: impl Fn(&str) -> Option<String>, home: &Path, uid: u32) -> Paths {
        let var = |k: &str| env(k).map(PathBuf::from).filter(|p| p.is_absolute());
        let root = uid == 0;
        let config_file = var("XDG_CONFIG_HOME")
            .unwrap_or_else(|| home.join(".config"))
            .join("banger/config.toml");
        let state_dir = var("XDG_STATE_HOME")
            .map(|p| p.join("banger"))
            .unwrap_or_else(|| {
                if root {
                    PathBuf::from("/var/lib/banger")
                } else {
                    home.join(".local/state/banger")
                }
            });
        let runtime_dir = var("XDG_RUNTIME_DIR")
            .map(|p| p.join("banger"))
            .unwrap_or_else(|| {
                if root {
                    PathBuf::from("/run/banger")
                } else {
                    PathBuf::from(format!("/tmp/banger-{uid}"))
                }
            });
        let cache_dir = var("XDG_CACHE_HOME")
            .map(|p| p.join("banger"))
            .unwrap_or_else(|| {
                if root {
                    PathBuf::from("/var/cache/banger")
                } else {
                    home.join(".cache/banger")
                }
            });
        Paths {
            config_file,
            state_dir,
            runtime_dir,
            cache_dir,
        }
    }

    /// The directories that must be the user's alone.
    pub fn private_dirs(&self) -> [PrivateDir<'_>; 3] {
        [
            PrivateDir {
                path: &self.state_dir,
                what: "state directory",
                var: "XDG_STATE_HOME",
            },
            PrivateDir {
                path: &self.runtime_dir,
                what: "runtime directory",
                var: "XDG_RUNTIME_DIR",
            },
            PrivateDir {
                path: &self.cache_dir,
                what: "cache directory",
                var: "XDG_CACHE_HOME",
            },
        ]
    }

    /// The daemon's API socket.
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.sock")
    }

    /// The lock that makes one daemon per state dir; it holds the owner's pid.
    pub fn daemon_lock(&self) -> PathBuf {
        self.state_dir.join("bangerd.lock")
    }

    /// The daemon's log file (its stderr when the CLI starts it).
    pub fn daemon_log(&self) -> PathBuf {
        self.state_dir.join("bangerd.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdg_variables_win() {
        let env = |k: &str| match k {
            "XDG_CONFIG_HOME" => Some("/c".to_string()),
            "XDG_STATE_HOME" => Some("/s".to_string()),
            "XDG_RUNTIME_DIR" => Some("/r".to_string()),
            "XDG_CACHE_HOME" => Some("/k".to_string()),
            _ => None,
        };
        let p = Paths::resolve(env, Path::new("/home/u"), 1000);
        assert_eq!(p.config_file, Path::new("/c/banger/config.toml"));
        assert_eq!(p.socket(), Path::new("/r/banger/bangerd.sock"));
        assert_eq!(p.state_dir, Path::new("/s/banger"));
        assert_eq!(p.cache_dir, Path::new("/k/banger"));
    }

    #[test]
    fn fallbacks_depend_on_root() {
        let none = |_: &str| None;
        let user = Paths::resolve(none, Path::new("/home/u"), 1000);
        assert_eq!(user.state_dir, Path::new("/home/u/.local/state/banger"));
        assert_eq!(user.runtime_dir, Path::new("/tmp/banger-1000"));
        let root = Paths::resolve(none, Path::new("/root"), 0);
        assert_eq!(root.state_dir, Path::new("/var/lib/banger"));
        assert_eq!(root.runtime_dir, Path::new("/run/banger"));
    }

    #[test]
    fn empty_and_relative_variables_are_ignored() {
        let env = |k: &str| match k {
            "XDG_RUNTIME_DIR" => Some("run".to_string()),
            "XDG_STATE_HOME" => Some(String::new()),
            _ => None,
        };
        let p = Paths::resolve(env, Path::new("/home/u"), 1000);
        assert_eq!(p.runtime_dir, Path::new("/tmp/banger-1000"));
        assert_eq!(p.state_dir, Path::new("/home/u/.local/state/banger"));
    }
}
