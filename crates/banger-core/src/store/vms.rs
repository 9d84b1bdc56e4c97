//! VM rows: intent (image, size), identity (id, name) and derived paths,
//! plus the recorded lifecycle state and the last error.

use super::{Store, StoreError, is_unique_violation};
use banger_api::VmState;
use rusqlite::{OptionalExtension, params};

#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: VmState,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_size_mib: u64,
    pub created_at: i64,
    pub dir: String,
    pub last_error: Option<String>,
    pub network: banger_api::NetworkMode,
    /// `HOST:GUEST` loopback forwards (user mode).
    pub publish: Vec<banger_api::PortForward>,
    /// Bridge address (the IPAM lease), without prefix.
    pub ip: Option<String>,
    pub mac: Option<String>,
    /// The engine that runs it.
    pub engine: banger_api::EngineKind,
    /// What capabilities kept of the create request, by capability name.
    pub options: std::collections::BTreeMap<String, serde_json::Value>,
}

pub(crate) fn state_from_str(s: &str) -> Option<VmState> {
    Some(match s {
        "creating" => VmState::Creating,
        "running" => VmState::Running,
        "stopped" => VmState::Stopped,
        "failed" => VmState::Failed,
        "deleting" => VmState::Deleting,
        _ => return None,
    })
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VmRecord> {
    let state: String = r.get(3)?;
    Ok(VmRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        image: r.get(2)?,
        state: state_from_str(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                3,
                rusqlite::types::Type::Text,
                format!("unknown vm state {state:?}").into(),
            )
        })?,
        cpus: r.get(4)?,
        memory_mib: r.get(5)?,
        disk_size_mib: r.get(6)?,
        created_at: r.get(7)?,
        dir: r.get(8)?,
        last_error: r.get(9)?,
        network: parse_word(r, 10)?,
        publish: serde_json::from_str(&r.get::<_, String>(11)?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(11, rusqlite::types::Type::Text, Box::new(e))
        })?,
        ip: r.get(12)?,
        mac: r.get(13)?,
        engine: parse_word(r, 14)?,
        options: Default::default(),
    })
}

/// A column holding one of banger-api's words (network mode, engine).
fn parse_word<T>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T>
where
    T: std::str::FromStr<Err = banger_api::UnknownWord>,
{
    r.get::<_, String>(i)?
        .parse()
        .map_err(|e: banger_api::UnknownWord| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
}

const COLUMNS: &str = "id, name, image, state, cpus, memory_mib, disk_size_mib, created_at, dir, last_error, network, publish, ip, mac, engine";

impl Store {
    pub fn insert_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                &format!(
                    "INSERT INTO vms ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
                ),
                params![
                    vm.id,
                    vm.name,
                    vm.image,
                    vm.state.as_str(),
                    vm.cpus,
                    vm.memory_mib,
                    vm.disk_size_mib,
                    vm.created_at,
                    vm.dir,
                    vm.last_error,
                    vm.network.as_str(),
                    serde_json::to_string(&vm.publish).expect("ports serialize"),
                    vm.ip,
                    vm.mac,
                    vm.engine.as_str()
                ],
            )
            .map_err(|e| match &e {
                rusqlite::Error::SqliteFailure(_, Some(msg)) if msg.contains("vms.ip") => {
                    StoreError::AddressTaken(vm.ip.clone().unwrap_or_default())
                }
                _ if is_unique_violation(&e) => StoreError::DuplicateVm(vm.name.clone()),
                _ => e.into(),
            })?;
            for (capability, data) in &vm.options {
                tx.execute(
                    "INSERT INTO vm_options (vm_id, capability, data) VALUES (?1, ?2, ?3)",
                    params![vm.id, capability, data.to_string()],
                )?;
            }
            Ok(())
        })
    }

    fn with_options(c: &rusqlite::Connection, mut vm: VmRecord) -> rusqlite::Result<VmRecord> {
        let mut st =
            c.prepare_cached("SELECT capability, data FROM vm_options WHERE vm_id = ?1")?;
        let rows = st.query_map([&vm.id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (capability, data) = row?;
            let value = serde_json::from_str(&data).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?;
            vm.options.insert(capability, value);
        }
        Ok(vm)
    }

    pub fn vm(&self, name: &str) -> Result<Option<VmRecord>, StoreError> {
        self.read(|c| {
            let vm = c
                .query_row(
                    &format!("SELECT {COLUMNS} FROM vms WHERE name = ?1"),
                    [name],
                    from_row,
                )
                .optional()?;
            Ok(vm.map(|v| Store::with_options(c, v)).transpose()?)
        })
    }

    pub fn vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLUMNS} FROM vms ORDER BY created_at, name"
            ))?;
            let rows = st.query_map([], from_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .map(|v| Store::with_options(c, v))
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Records a state and (replacing it) the last error.
    pub fn set_vm_state(
        &self,
        name: &str,
        state: VmState,
        last_error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "UPDATE vms SET state = ?2, last_error = ?3 WHERE name = ?1",
                params![name, state.as_str(), last_error],
            )?;
            Ok(())
        })
    }

    /// Sets option `key` of the VM whose id is `vm_id` (replacing it);
    /// false when there is no such VM.
    pub fn set_vm_option(
        &self,
        vm_id: &str,
        key: &str,
        data: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            if tx
                .query_row("SELECT 1 FROM vms WHERE id = ?1", [vm_id], |_| Ok(()))
                .optional()?
                .is_none()
            {
                return Ok(false);
            }
            tx.execute(
                "INSERT OR REPLACE INTO vm_options (vm_id, capability, data) VALUES (?1, ?2, ?3)",
                params![vm_id, key, data.to_string()],
            )?;
            Ok(true)
        })
    }

    /// Leases `ip` to `vm` (or releases its lease with `None`).
    pub fn set_vm_ip(&self, name: &str, ip: Option<&str>) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("UPDATE vms SET ip = ?2 WHERE name = ?1", params![name, ip])
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::AddressTaken(ip.unwrap_or_default().to_string())
                    } else {
                        e.into()
                    }
                })?;
            Ok(())
        })
    }

    /// Addresses leased to VMs (bridge mode).
    pub fn leased_ips(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare("SELECT ip FROM vms WHERE ip IS NOT NULL")?;
            let rows = st
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(rows)
        })
    }

    /// In one transaction: the row reserving `name` goes, VM `from` takes
    /// that name (keeping its id, directories, MAC and address) with
    /// `created_at`, state `creating` (until the create ends) and loses its
    /// option `drop_option`. False, changing nothing, when `from` is not
    /// there.
    pub fn take_over_vm(
        &self,
        name: &str,
        from: &str,
        drop_option: &str,
        created_at: i64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let Some(id) = tx
                .query_row("SELECT id FROM vms WHERE name = ?1", [from], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?
            else {
                return Ok(false);
            };
            tx.execute("DELETE FROM vms WHERE name = ?1", [name])?;
            tx.execute(
                "UPDATE vms SET name = ?2, created_at = ?3, state = ?4 WHERE id = ?1",
                params![id, name, created_at, VmState::Creating.as_str()],
            )?;
            tx.execute(
                "DELETE FROM vm_options WHERE vm_id = ?1 AND capability = ?2",
                params![id, drop_option],
            )?;
            Ok(true)
        })
    }

    pub fn delete_vm(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| Ok(tx.execute("DELETE FROM vms WHERE name = ?1", [name])? > 0))
    }
}

#[cfg(test)]
pub(crate) fn sample(name: &str) -> VmRecord {
    tests::vm(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::images::sample;

    pub(super) fn vm(name: &str) -> VmRecord {
        VmRecord {
            id: format!("id-{name}"),
            name: name.into(),
            image: "minimal".into(),
            state: VmState::Creating,
            cpus: 1,
            memory_mib: 256,
            disk_size_mib: 1024,
            created_at: 5,
            dir: format!("/vms/{name}"),
            last_error: None,
            network: banger_api::NetworkMode::None,
            publish: vec![],
            ip: None,
            mac: None,
            engine: banger_api::EngineKind::Qemu,
            options: Default::default(),
        }
    }

    #[test]
    fn an_address_is_leased_to_one_vm_at_a_time() {
        let s = Store::open_in_memory().unwrap();
        s.insert_image(&sample("minimal")).unwrap();
        s.insert_vm(&vm("a")).unwrap();
        s.insert_vm(&vm("b")).unwrap();
        s.set_vm_ip("a", Some("172.30.0.2")).unwrap();
        assert!(
            matches!(s.set_vm_ip("b", Some("172.30.0.2")), Err(StoreError::AddressTaken(ip)) if ip == "172.30.0.2")
        );
        assert_eq!(s.leased_ips().unwrap(), vec!["172.30.0.2".to_string()]);
        s.delete_vm("a").unwrap();
        s.set_vm_ip("b", Some("172.30.0.2")).unwrap();
        s.set_vm_ip("b", None).unwrap();
        assert!(s.leased_ips().unwrap().is_empty());
    }

    #[test]
    fn an_option_is_set_replaced_and_refused_for_a_vm_that_is_gone() {
        let s = Store::open_in_memory().unwrap();
        s.insert_image(&sample("minimal")).unwrap();
        s.insert_vm(&vm("a")).unwrap();
        let one = serde_json::json!({"pid": 1});
        assert!(s.set_vm_option("id-a", "caller", &one).unwrap());
        let two = serde_json::json!({"pid": 2});
        assert!(s.set_vm_option("id-a", "caller", &two).unwrap());
        assert_eq!(
            s.vm("a").unwrap().unwrap().options.get("caller"),
            Some(&two)
        );
        s.delete_vm("a").unwrap();
        assert!(!s.set_vm_option("id-a", "caller", &one).unwrap());
    }

    #[test]
    fn mode_and_engine_round_trip_as_words() {
        let s = Store::open_in_memory().unwrap();
        s.insert_image(&sample("minimal")).unwrap();
        let mut v = vm("web");
        v.network = banger_api::NetworkMode::User;
        v.engine = banger_api::EngineKind::Firecracker;
        v.options.insert(
            "bridge-net".into(),
            serde_json::json!({"allow_cidrs": ["10.0.0.0/8"]}),
        );
        s.insert_vm(&v).unwrap();
        assert_eq!(s.vm("web").unwrap(), Some(v));
    }

    #[test]
    fn vm_rows_round_trip_and_track_state() {
        let s = Store::open_in_memory().unwrap();
        s.insert_image(&sample("minimal")).unwrap();
        s.insert_vm(&vm("web")).unwrap();
        s.set_vm_state("web", VmState::Failed, Some("boom"))
            .unwrap();
        let got = s.vm("web").unwrap().unwrap();
        assert_eq!(
            (got.state, got.last_error.as_deref()),
            (VmState::Failed, Some("boom"))
        );
        assert!(s.delete_vm("web").unwrap());
        assert_eq!(s.vm("web").unwrap(), None);
    }

    #[test]
    fn a_taken_over_vm_keeps_its_id_and_lease_under_the_reserved_name() {
        let s = Store::open_in_memory().unwrap();
        s.insert_image(&sample("minimal")).unwrap();
        let mut standby = vm("standby-1");
        standby
            .options
            .insert("standby".into(), serde_json::json!("minimal"));
        standby
            .options
            .insert("egress".into(), serde_json::json!({}));
        s.insert_vm(&standby).unwrap();
        s.set_vm_ip("standby-1", Some("172.30.0.9")).unwrap();
        s.insert_vm(&vm("web")).unwrap();
        assert!(s.take_over_vm("web", "standby-1", "standby", 42).unwrap());
        let got = s.vm("web").unwrap().unwrap();
        assert_eq!(
            (
                got.id.as_str(),
                got.ip.as_deref(),
                got.created_at,
                got.state
            ),
            ("id-standby-1", Some("172.30.0.9"), 42, VmState::Creating)
        );
        assert_eq!(got.options.keys().collect::<Vec<_>>(), ["egress"]);
        assert_eq!(s.vm("standby-1").unwrap(), None);
        assert_eq!(s.vms().unwrap().len(), 1, "the reserving row is gone");
        assert!(
            !s.take_over_vm("api", "standby-1", "standby", 43).unwrap(),
            "a standby is taken once"
        );
    }

    #[test]
    fn duplicate_vm_names_are_refused() {
        let s = Store::open_in_memory().unwrap();
        s.insert_image(&sample("minimal")).unwrap();
        s.insert_vm(&vm("web")).unwrap();
        let mut again = vm("web");
        again.id = "other".into();
        assert!(matches!(s.insert_vm(&again), Err(StoreError::DuplicateVm(n)) if n == "web"));
    }

    #[test]
    fn a_vm_needs_its_image_and_pins_it() {
        let s = Store::open_in_memory().unwrap();
        assert!(
            s.insert_vm(&vm("web")).is_err(),
            "foreign key must refuse an unknown image"
        );
        s.insert_image(&sample("minimal")).unwrap();
        s.insert_vm(&vm("web")).unwrap();
        assert!(matches!(
            s.delete_image("minimal"),
            Err(StoreError::ImageInUse { .. })
        ));
    }
}
