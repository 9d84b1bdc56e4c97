//! The small closed sets a request or a VM names by word: network mode,
//! image preset, engine. Each is an enum that reads and writes the same
//! lowercase word on the wire, in the store and on the command line, and
//! refuses any other word with a message that lists the known ones.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Declares a word enum: variants with their words, `as_str`, `ALL`,
/// `Display`, `FromStr` (with `$what` naming the set in errors) and serde
/// through the same words.
macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;

            fn from_str(s: &str) -> Result<$name, UnknownWord> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownWord {
                        what: $what,
                        word: s.to_string(),
                        known: $name::ALL.iter().map(|v| v.as_str()).collect(),
                    })
            }
        }

        impl TryFrom<String> for $name {
            type Error = UnknownWord;

            fn try_from(s: String) -> Result<$name, UnknownWord> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.as_str().to_string()
            }
        }
    };
}

word_enum!(
    /// How a VM is connected.
    NetworkMode, "network mode", {
        /// A tap on the daemon's bridge, a leased address, DNS, NAT out (root).
        Bridge => "bridge",
        /// The engine's user-mode NAT, reached through loopback forwards. No privileges.
        User => "user",
        /// The agent channel only.
        None => "none",
    }
);

word_enum!(
    /// What `image build` knows how to build.
    Preset, "preset", {
        /// mmdebstrap's minbase with openssh-server, git, python3 and friends.
        Debian => "debian",
        /// busybox and the agent: a few MB.
        Minimal => "minimal",
    }
);

word_enum!(
    /// The VMM a VM runs under.
    EngineKind, "engine", {
        Qemu => "qemu",
        Firecracker => "firecracker",
    }
);

word_enum!(
    /// What `workspace prepare` copies from a checkout.
    #[derive(Default)]
    WorkspaceMode, "workspace mode", {
        /// Tracked files, uncommitted edits and untracked files git does not ignore, and `.git`.
        #[default]
        Tracked => "tracked",
        /// The whole tree: ignored files and submodules too, minus `--exclude`.
        FullCopy => "full_copy",
    }
);

word_enum!(
    /// Where a guest session is.
    SessionState, "session state", {
        Running => "running",
        /// The command ended on its own (or was stopped).
        Exited => "exited",
        /// It never started: the preflight found its cwd or command missing.
        Failed => "failed",
        /// The vm stopped or restarted under it.
        Ended => "ended",
    }
);

/// A word outside its set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {word:?}: use {}", join_or(known))]
pub struct UnknownWord {
    pub what: &'static str,
    pub word: String,
    pub known: Vec<&'static str>,
}

fn join_or(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_text_and_json() {
        for m in NetworkMode::ALL {
            assert_eq!(m.as_str().parse::<NetworkMode>().unwrap(), *m);
            let json = serde_json::to_string(m).unwrap();
            assert_eq!(serde_json::from_str::<NetworkMode>(&json).unwrap(), *m);
        }
        assert_eq!(
            serde_json::to_string(&Preset::Debian).unwrap(),
            "\"debian\""
        );
    }

    #[test]
    fn unknown_words_list_the_known_ones() {
        let err = "wifi".parse::<NetworkMode>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown network mode \"wifi\": use bridge, user or none"
        );
        let err = serde_json::from_str::<Preset>("\"arch\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown preset \"arch\": use debian or minimal"),
            "{err}"
        );
    }
}
