//! Snapshot rows: which snapshots a vm has, their size and time. The files
//! are the vm's (`<state>/vms/<id>/snapshots/NAME`, see `vm::snapshot`); a
//! row is written only once its directory is complete, and deleted before
//! its directory is.

use super::{Store, StoreError};
use rusqlite::params;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub vm_id: String,
    pub name: String,
    pub size_bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
}

impl Store {
    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO snapshots (vm_id, name, size_bytes, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![s.vm_id, s.name, s.size_bytes as i64, s.created_at],
            )?;
            Ok(())
        })
    }

    pub fn snapshots(&self, vm_id: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT vm_id, name, size_bytes, created_at FROM snapshots WHERE vm_id = ?1 ORDER BY created_at, name",
            )?;
            let rows = st
                .query_map([vm_id], |r| {
                    Ok(SnapshotRecord {
                        vm_id: r.get(0)?,
                        name: r.get(1)?,
                        size_bytes: r.get::<_, i64>(2)? as u64,
                        created_at: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Whether a row was deleted.
    pub fn delete_snapshot(&self, vm_id: &str, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM snapshots WHERE vm_id = ?1 AND name = ?2",
                params![vm_id, name],
            )? > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_listed_oldest_first_and_deleted_by_name() {
        let store = Store::open_in_memory().unwrap();
        store
            .insert_image(&crate::store::images::sample("minimal"))
            .unwrap();
        let rec = crate::store::vms::sample("web");
        store.insert_vm(&rec).unwrap();
        let vm = rec.id.clone();
        for (name, at) in [("b", 2), ("a", 1)] {
            store
                .insert_snapshot(&SnapshotRecord {
                    vm_id: vm.clone(),
                    name: name.into(),
                    size_bytes: 10,
                    created_at: at,
                })
                .unwrap();
        }
        let names: Vec<_> = store
            .snapshots(&vm)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(store.delete_snapshot(&vm, "a").unwrap());
        assert!(!store.delete_snapshot(&vm, "a").unwrap());
        assert_eq!(store.snapshots(&vm).unwrap().len(), 1);
        store.delete_vm("web").unwrap();
        assert!(store.snapshots(&vm).unwrap().is_empty());
    }
}
