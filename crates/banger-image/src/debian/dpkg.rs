//! What a root filesystem has installed, read from dpkg's status file, and
//! how that differs from what a manifest recorded: the evidence that an
//! image rebuilt from its manifest is the image it describes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Package name → version of every package dpkg lists as installed in the
/// tree at `root` (`<root>/var/lib/dpkg/status`).
pub fn installed(root: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(root.join("var/lib/dpkg/status"))?;
    Ok(parse_status(&text))
}

/// Parses dpkg's status file: stanzas separated by blank lines, of which
/// those whose `Status` ends in `installed` count (not `config-files`).
pub fn parse_status(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let (mut name, mut version, mut status) = (None, None, None);
        for line in stanza.lines() {
            if let Some((key, value)) = line.split_once(':') {
                let value = value.trim();
                match key {
                    "Package" => name = Some(value),
                    "Version" => version = Some(value),
                    "Status" => status = Some(value),
                    _ => {}
                }
            }
        }
        if let (Some(name), Some(version), Some(status)) = (name, version, status)
            && status.ends_with(" installed")
        {
            out.insert(name.to_string(), version.to_string());
        }
    }
    out
}

/// How `got` differs from `want`, package by package.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drift {
    /// (name, recorded version, version now).
    pub changed: Vec<(String, String, String)>,
    /// Recorded, not installed now.
    pub missing: Vec<String>,
    /// Installed now, not recorded.
    pub added: Vec<String>,
}

impl Drift {
    pub fn between(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> Drift {
        let mut drift = Drift::default();
        for (name, old) in want {
            match got.get(name) {
                Some(new) if new != old => {
                    drift.changed.push((name.clone(), old.clone(), new.clone()))
                }
                Some(_) => {}
                None => drift.missing.push(name.clone()),
            }
        }
        drift.added = got
            .keys()
            .filter(|name| !want.contains_key(*name))
            .cloned()
            .collect();
        drift
    }

    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty() && self.added.is_empty()
    }

    /// One line for a person: "all 215 packages at the manifest's versions",
    /// or what differs, the first few of each kind named.
    pub fn summary(&self, total: usize) -> String {
        if self.is_empty() {
            return format!("all {total} packages at the manifest's versions");
        }
        const SHOWN: usize = 5;
        let mut text = String::from("differs from the manifest:");
        let more = |n: usize| match n > SHOWN {
            true => format!(" and {} more", n - SHOWN),
            false => String::new(),
        };
        if !self.changed.is_empty() {
            let named: Vec<String> = self
                .changed
                .iter()
                .take(SHOWN)
                .map(|(n, old, new)| format!("{n} {old} -> {new}"))
                .collect();
            let _ = write!(
                text,
                " {} changed ({}{})",
                self.changed.len(),
                named.join(", "),
                more(self.changed.len())
            );
        }
        for (list, what) in [(&self.missing, "missing"), (&self.added, "new")] {
            if !list.is_empty() {
                let named: Vec<&str> = list.iter().take(SHOWN).map(String::as_str).collect();
                let _ = write!(
                    text,
                    " {} {what} ({}{})",
                    list.len(),
                    named.join(", "),
                    more(list.len())
                );
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: git
Status: install ok installed
Priority: optional
Version: 1:2.39.5-0+deb12u2
Description: fast, scalable, distributed revision control system
 Git is popular.

Package: old-conf
Status: deinstall ok config-files
Version: 1.0

Package: zlib1g
Status: install ok installed
Multi-Arch: same
Version: 1:1.2.13.dfsg-1
";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn only_installed_packages_count() {
        assert_eq!(
            parse_status(STATUS),
            map(&[("git", "1:2.39.5-0+deb12u2"), ("zlib1g", "1:1.2.13.dfsg-1")])
        );
    }

    #[test]
    fn installed_reads_the_trees_status_file() {
        let root = tempfile::tempdir().unwrap();
        let dpkg = root.path().join("var/lib/dpkg");
        std::fs::create_dir_all(&dpkg).unwrap();
        std::fs::write(dpkg.join("status"), STATUS).unwrap();
        assert_eq!(installed(root.path()).unwrap().len(), 2);
        assert!(installed(&root.path().join("nope")).is_err());
    }

    #[test]
    fn the_same_set_reads_as_identical() {
        let set = parse_status(STATUS);
        let drift = Drift::between(&set, &set);
        assert!(drift.is_empty());
        assert_eq!(
            drift.summary(2),
            "all 2 packages at the manifest's versions"
        );
    }

    #[test]
    fn drift_names_changed_missing_and_new_packages() {
        let want = map(&[("git", "1"), ("curl", "7"), ("zlib1g", "1.2")]);
        let got = map(&[("git", "2"), ("zlib1g", "1.2"), ("vim", "9")]);
        let drift = Drift::between(&want, &got);
        assert_eq!(drift.changed, [("git".into(), "1".into(), "2".into())]);
        assert_eq!(drift.missing, ["curl"]);
        assert_eq!(drift.added, ["vim"]);
        assert_eq!(
            drift.summary(3),
            "differs from the manifest: 1 changed (git 1 -> 2) 1 missing (curl) 1 new (vim)"
        );
    }

    #[test]
    fn long_drifts_name_the_first_few() {
        let want: BTreeMap<String, String> =
            (0..8).map(|i| (format!("p{i}"), "1".to_string())).collect();
        let got: BTreeMap<String, String> =
            (0..8).map(|i| (format!("p{i}"), "2".to_string())).collect();
        let summary = Drift::between(&want, &got).summary(8);
        assert!(summary.contains("8 changed (p0 1 -> 2,"), "{summary}");
        assert!(summary.ends_with("p4 1 -> 2 and 3 more)"), "{summary}");
    }
}
