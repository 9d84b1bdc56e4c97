//! Workspace rows: which host checkout a VM's guest directory was prepared
//! from, how, and the commit it started at (what `workspace export` sends
//! back is what the guest committed since).

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, params};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRecord {
    pub vm_id: String,
    pub guest_path: String,
    /// The host checkout's top directory.
    pub source: String,
    /// `tracked` or `full_copy`.
    pub mode: String,
    pub git_ref: Option<String>,
    /// The commit the guest's HEAD was at after prepare.
    pub base_commit: Option<String>,
    pub prepared_at: i64,
}

const COLUMNS: &str = "vm_id, guest_path, source, mode, git_ref, base_commit, prepared_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WorkspaceRecord> {
    Ok(WorkspaceRecord {
        vm_id: r.get(0)?,
        guest_path: r.get(1)?,
        source: r.get(2)?,
        mode: r.get(3)?,
        git_ref: r.get(4)?,
        base_commit: r.get(5)?,
        prepared_at: r.get(6)?,
    })
}

impl Store {
    /// Records (or replaces) the workspace at `w.guest_path` of a vm.
    pub fn save_workspace(&self, w: &WorkspaceRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                &format!("INSERT OR REPLACE INTO workspaces ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![w.vm_id, w.guest_path, w.source, w.mode, w.git_ref, w.base_commit, w.prepared_at],
            )?;
            Ok(())
        })
    }

    pub fn workspace(
        &self,
        vm_id: &str,
        guest_path: &str,
    ) -> Result<Option<WorkspaceRecord>, StoreError> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM workspaces WHERE vm_id = ?1 AND guest_path = ?2"),
                [vm_id, guest_path],
                from_row,
            )
            .optional()?)
        })
    }
}
