//! `banger doctor`'s leak lines (and `--fix`): what this instance left
//! behind that no VM owns, found while the daemon runs. Reconcile removes
//! the same at start-up; these catch what appears later (a process started
//! by hand, a directory copied in, a crash of something else).
//!
//! - processes of ours carrying one of this instance's VM socket paths but
//!   owned by no running VM (an engine, a passt);
//! - VM directories (state and sockets) with no row.

use super::Lifecycle;
use crate::doctor::check;
use banger_api::{Check, CheckStatus};
use std::collections::HashSet;
use std::path::Path;

/// One leak as a doctor line: a warning to fix, or what `--fix` did.
pub fn leak_line(what: String, fixed: Option<Result<(), String>>) -> Check {
    match fixed {
        None => check("leak", CheckStatus::Warn, what, Some("banger doctor --fix")),
        Some(Ok(())) => check("leak", CheckStatus::Pass, format!("removed: {what}"), None),
        Some(Err(e)) => check(
            "leak",
            CheckStatus::Fail,
            format!("cannot remove {what}: {e}"),
            None,
        ),
    }
}

impl Lifecycle {
    pub fn leaks(&self, fix: bool) -> Vec<Check> {
        let vms = self.store.vms().unwrap_or_default();
        let ids: HashSet<String> = vms.iter().map(|v| v.id.clone()).collect();
        let mut out = Vec::new();
        let vms_run = self.paths.runtime_dir.join("vms");
        let mark = format!("{}/", vms_run.display());
        let running: Vec<(String, u32)> = vms
            .iter()
            .filter_map(|v| Some((v.id.clone(), self.runtime.get(&v.name)?.handles.pid)))
            .collect();
        for (pid, args) in banger_sys::process::with_path_arg(&mark) {
            let owned = running.iter().any(|(id, p)| {
                *p == pid
                    || args
                        .iter()
                        .any(|a| banger_sys::process::names_path_in(a, &format!("{mark}{id}/")))
            });
            if owned {
                continue;
            }
            let what = format!(
                "process {pid} ({}) carries a vm socket path of this instance but no vm owns it",
                args.first().map(String::as_str).unwrap_or("?")
            );
            let fixed = fix.then(|| {
                banger_sys::process::signal(pid, banger_sys::process::Signal::Kill)
                    .map_err(|e| e.to_string())
            });
            out.push(leak_line(what, fixed));
        }
        for root in [self.paths.state_dir.join("vms"), vms_run] {
            for name in dir_names(&root) {
                if ids.contains(&name) {
                    continue;
                }
                let dir = root.join(&name);
                let what = format!("{} belongs to no vm", dir.display());
                let fixed = fix.then(|| std::fs::remove_dir_all(&dir).map_err(|e| e.to_string()));
                out.push(leak_line(what, fixed));
            }
        }
        out
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
