//! Embedded schema migrations, applied in order and tracked with
//! `PRAGMA user_version`. Released entries are never edited: add a new one.

use super::StoreError;
use rusqlite::Connection;

pub const MIGRATIONS: &[&str] = &[
    // 1: images, vms, operations
    r#"
    CREATE TABLE images (
        name           TEXT PRIMARY KEY,
        source         TEXT NOT NULL,
        kernel_version TEXT,
        dir            TEXT NOT NULL,
        created_at     INTEGER NOT NULL,
        manifest       TEXT NOT NULL
    );
    CREATE TABLE vms (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        image         TEXT NOT NULL REFERENCES images(name) ON DELETE RESTRICT,
        state         TEXT NOT NULL,
        cpus          INTEGER NOT NULL,
        memory_mib    INTEGER NOT NULL,
        disk_size_mib INTEGER NOT NULL,
        created_at    INTEGER NOT NULL,
        dir           TEXT NOT NULL,
        last_error    TEXT
    );
    CREATE TABLE operations (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        target      TEXT NOT NULL,
        state       TEXT NOT NULL,
        stages      TEXT NOT NULL,
        error       TEXT,
        started_at  INTEGER NOT NULL,
        duration_ms INTEGER
    );
    CREATE INDEX operations_started ON operations(started_at);
    "#,
    // 2: networking. The address is the IPAM lease: unique, so no two VMs
    // ever share one, and released with the row.
    r#"
    ALTER TABLE vms ADD COLUMN network TEXT NOT NULL DEFAULT 'none';
    ALTER TABLE vms ADD COLUMN publish TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE vms ADD COLUMN ip TEXT;
    ALTER TABLE vms ADD COLUMN mac TEXT;
    CREATE UNIQUE INDEX vms_ip ON vms(ip) WHERE ip IS NOT NULL;
    "#,
    // 3: each vm records the engine that runs it.
    r#"
    ALTER TABLE vms ADD COLUMN engine TEXT NOT NULL DEFAULT 'qemu';
    "#,
    // 4: the workspace each vm was prepared from (for export), and the
    // guest sessions started through the daemon (listed as ended after
    // the vm restarts). Both go with the vm.
    r#"
    CREATE TABLE workspaces (
        vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        guest_path  TEXT NOT NULL,
        source      TEXT NOT NULL,
        mode        TEXT NOT NULL,
        git_ref     TEXT,
        base_commit TEXT,
        prepared_at INTEGER NOT NULL,
        PRIMARY KEY (vm_id, guest_path)
    );
    CREATE TABLE sessions (
        vm_id      TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        name       TEXT NOT NULL,
        argv       TEXT NOT NULL,
        cwd        TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        boot       INTEGER NOT NULL,
        PRIMARY KEY (vm_id, name)
    );
    "#,
    // 5: what capabilities keep of a vm's request (an egress allow-list,
    // say), one JSON document per capability, so a new capability adds no
    // column to vms.
    r#"
    CREATE TABLE vm_options (
        vm_id      TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        capability TEXT NOT NULL,
        data       TEXT NOT NULL,
        PRIMARY KEY (vm_id, capability)
    );
    "#,
    // 6: a vm's snapshots (their files are in the vm's state dir, under
    // snapshots/NAME; the row is written after the directory is complete).
    r#"
    CREATE TABLE snapshots (
        vm_id      TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
        name       TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (vm_id, name)
    );
    "#,
];

pub fn run(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i + 1;
        let tx = conn
            .transaction()
            .map_err(|source| StoreError::Migrate { version, source })?;
        tx.execute_batch(sql)
            .map_err(|source| StoreError::Migrate { version, source })?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(|source| StoreError::Migrate { version, source })?;
        tx.commit()
            .map_err(|source| StoreError::Migrate { version, source })?;
    }
    Ok(())
}
