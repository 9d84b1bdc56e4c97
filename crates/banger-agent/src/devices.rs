//! Finding the guest's devices in sysfs: virtio disks by the serial number
//! the host gave them, and the agent's virtio-serial port by name. Owns only
//! the lookups (sysfs roots are parameters, so tests use temp dirs); opening
//! and mounting is `boot.rs`'s.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often to look again while waiting for devices to appear. Short: a
/// disk's `/dev` node comes from the kernel's devtmpfs thread a moment
/// after its driver loads, and every millisecond here is boot time.
pub const POLL: Duration = Duration::from_millis(1);

/// Maps the serial number of every `vd*` disk under `sys_block`
/// (`/sys/block`) to its device name (`vda`).
pub fn disks_by_serial(sys_block: &Path) -> HashMap<String, String> {
    let Ok(dir) = std::fs::read_dir(sys_block) else {
        return HashMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            if !name.starts_with("vd") {
                return None;
            }
            let serial = std::fs::read_to_string(entry.path().join("serial")).ok()?;
            Some((serial.trim().to_string(), name))
        })
        .collect()
}

/// Polls [`disks_by_serial`] until every serial in `required` is present
/// and has a node under `dev`, or `timeout` passes; returns what it found.
pub fn wait_for_disks(
    sys_block: &Path,
    dev: &Path,
    required: &[&str],
    timeout: Duration,
) -> HashMap<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = disks_by_serial(sys_block);
        let ready = required
            .iter()
            .all(|s| found.get(*s).is_some_and(|name| dev.join(name).exists()));
        if ready || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(POLL);
    }
}

/// The device name (`vport1p1`) of the virtio-serial port called `name`
/// under `virtio_ports` (`/sys/class/virtio-ports`).
pub fn port_by_name(virtio_ports: &Path, name: &str) -> Option<String> {
    std::fs::read_dir(virtio_ports)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            let port_name = std::fs::read_to_string(entry.path().join("name")).ok()?;
            (port_name.trim() == name)
                .then(|| entry.file_name().into_string().ok())
                .flatten()
        })
}

/// Polls [`port_by_name`] until the port and its node under `dev` exist, or
/// `timeout` passes.
pub fn wait_for_port(
    virtio_ports: &Path,
    dev: &Path,
    name: &str,
    timeout: Duration,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = port_by_name(virtio_ports, name).filter(|p| dev.join(p).exists());
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn disks_are_found_by_serial_and_other_devices_ignored() {
        let sys = tempfile::tempdir().unwrap();
        put(&sys.path().join("vda/serial"), "banger-root\n");
        put(&sys.path().join("vdb/serial"), "banger-config");
        put(&sys.path().join("loop0/serial"), "banger-work");
        let disks = disks_by_serial(sys.path());
        assert_eq!(disks.get("banger-root").map(String::as_str), Some("vda"));
        assert_eq!(disks.get("banger-config").map(String::as_str), Some("vdb"));
        assert!(!disks.contains_key("banger-work"));
    }

    #[test]
    fn waiting_for_disks_gives_up_after_the_timeout() {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        put(&sys.path().join("vda/serial"), "banger-root");
        let found = wait_for_disks(
            sys.path(),
            dev.path(),
            &["banger-root"],
            Duration::from_millis(30),
        );
        assert_eq!(
            found.len(),
            1,
            "found in sysfs even though /dev has no node yet"
        );
    }

    #[test]
    fn the_agent_port_is_found_by_name() {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        put(
            &sys.path().join("vport1p0/name"),
            "org.qemu.guest_agent.0\n",
        );
        put(&sys.path().join("vport1p1/name"), "org.banger.agent\n");
        put(&dev.path().join("vport1p1"), "");
        assert_eq!(
            wait_for_port(sys.path(), dev.path(), "org.banger.agent", Duration::ZERO).as_deref(),
            Some("vport1p1")
        );
        assert_eq!(port_by_name(sys.path(), "missing"), None);
    }
}
