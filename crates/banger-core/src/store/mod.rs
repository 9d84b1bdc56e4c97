//! The durable store: one SQLite file (bundled SQLite) holding what images
//! and VMs *are* and the record of operations. Every connection gets WAL,
//! foreign keys and a busy timeout; writes run in `BEGIN IMMEDIATE`;
//! migrations are embedded and never edited once released. Nothing transient
//! (pids, sockets, taps) is stored here: see `vm::handles`.

mod images;
mod migrations;
mod operations;
mod reserve;
pub mod sessions;
pub mod snapshots;
mod vms;
pub mod workspaces;

pub use images::ImageRecord;
pub use sessions::SessionRecord;
pub use vms::VmRecord;
pub use workspaces::WorkspaceRecord;

use rusqlite::{Connection, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store migration {version} failed")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("a vm named {0:?} already exists: pick another --name or delete it first")]
    DuplicateVm(String),
    #[error("an image named {0:?} already exists: delete it first or pick another name")]
    DuplicateImage(String),
    #[error("image {image:?} is used by vm {vm:?}: delete the vm first")]
    ImageInUse { image: String, vm: String },
    #[error("address {0} is already leased to another vm")]
    AddressTaken(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

pub struct Store {
    conn: Mutex<Connection>,
    /// Room for the store's own writes on a full disk (none in memory).
    reserve: Option<reserve::Reserve>,
}

impl Store {
    /// Opens (creating if needed) the store file and migrates it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Store::init(conn, Some(reserve::Reserve::beside(path))).map_err(|e| match e {
            StoreError::Sql(source) => StoreError::Open {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// An in-memory store for unit tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?, None)
    }

    fn init(mut conn: Connection, reserve: Option<reserve::Reserve>) -> Result<Store, StoreError> {
        configure(&conn)?;
        migrations::run(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
            reserve,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction and commits it. On a
    /// full disk the reserve is released and `f` runs once more.
    fn write<T>(
        &self,
        f: impl Fn(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let mut attempt = || -> Result<T, StoreError> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        let out = match attempt() {
            Err(StoreError::Sql(e))
                if is_disk_full(&e) && self.reserve.as_ref().is_some_and(|r| r.release()) =>
            {
                attempt()
            }
            other => other,
        };
        if out.is_ok()
            && let Some(r) = &self.reserve
        {
            r.replenish();
        }
        out
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&self.lock())
    }
}

/// Connection-scoped settings; applied to every connection the store opens.
fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

fn is_disk_full(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_uses_wal_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let conn = store.lock();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), fk), ("wal", 1));
    }

    #[test]
    fn reopening_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(Store::open(&path).unwrap());
        let store = Store::open(&path).unwrap();
        let v: i64 = store
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, migrations::MIGRATIONS.len());
    }
}
