//! Session rows: the guest sessions started through the daemon, with the
//! boot they belong to. The agent keeps the live ones; these rows are what
//! lets the daemon list a session after the vm restarted (as ended) or
//! after the daemon itself was killed.

use super::{Store, StoreError};
use rusqlite::params;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub vm_id: String,
    pub name: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub started_at: i64,
    /// The engine start time of the boot it ran in (sessions of an older
    /// boot have ended with it).
    pub boot: i64,
}

impl Store {
    pub fn save_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        let argv = serde_json::to_string(&s.argv).expect("argv serializes");
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO sessions (vm_id, name, argv, cwd, started_at, boot) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![s.vm_id, s.name, argv, s.cwd, s.started_at, s.boot],
            )?;
            Ok(())
        })
    }

    pub fn sessions(&self, vm_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT vm_id, name, argv, cwd, started_at, boot FROM sessions WHERE vm_id = ?1 ORDER BY started_at, name",
            )?;
            let rows = st
                .query_map([vm_id], |r| {
                    let argv: String = r.get(2)?;
                    Ok(SessionRecord {
                        vm_id: r.get(0)?,
                        name: r.get(1)?,
                        argv: serde_json::from_str(&argv).map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
                        })?,
                        cwd: r.get(3)?,
                        started_at: r.get(4)?,
                        boot: r.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::workspaces::WorkspaceRecord;

    #[test]
    fn sessions_and_workspaces_go_with_their_vm() {
        let s = Store::open_in_memory().unwrap();
        s.insert_image(&crate::store::images::sample("minimal"))
            .unwrap();
        let vm = crate::store::vms::sample("web");
        s.insert_vm(&vm).unwrap();
        let rec = SessionRecord {
            vm_id: vm.id.clone(),
            name: "build".into(),
            argv: vec!["cargo".into(), "build".into()],
            cwd: "/root/repo".into(),
            started_at: 5,
            boot: 4,
        };
        s.save_session(&rec).unwrap();
        assert_eq!(s.sessions(&vm.id).unwrap(), [rec]);
        let w = WorkspaceRecord {
            vm_id: vm.id.clone(),
            guest_path: "/root/repo".into(),
            source: "/src/p".into(),
            mode: "tracked".into(),
            git_ref: None,
            base_commit: Some("abc".into()),
            prepared_at: 6,
        };
        s.save_workspace(&w).unwrap();
        assert_eq!(s.workspace(&vm.id, "/root/repo").unwrap(), Some(w));
        s.delete_vm("web").unwrap();
        assert!(s.sessions(&vm.id).unwrap().is_empty());
        assert_eq!(s.workspace(&vm.id, "/root/repo").unwrap(), None);
    }
}
