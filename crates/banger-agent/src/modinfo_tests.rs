//! Unit tests of `modinfo.rs`: the list's lines read, the decision over the
//! Debian cloud kernel's module list, and module signatures cut off.

use super::*;

fn module(name: &str, ids: &[u32], depends: &[&str]) -> ModInfo {
    ModInfo {
        name: name.into(),
        virtio_ids: ids.iter().map(|i| Some(*i)).collect(),
        depends: depends.iter().map(|d| d.to_string()).collect(),
    }
}

/// The image's list for Debian 12's cloud kernel, in load order.
fn debian_cloud() -> Vec<ModInfo> {
    vec![
        module("virtio_ring", &[], &[]),
        module("virtio", &[], &["virtio_ring"]),
        module("virtio_mmio", &[], &["virtio", "virtio_ring"]),
        module("virtio_blk", &[2], &["virtio", "virtio_ring"]),
        module("virtio_console", &[3], &["virtio", "virtio_ring"]),
        module("failover", &[], &[]),
        module("net_failover", &[], &["failover"]),
        module(
            "virtio_net",
            &[1],
            &["net_failover", "virtio_ring", "virtio"],
        ),
        module("vsock", &[], &[]),
        module(
            "vmw_vsock_virtio_transport_common",
            &[],
            &["vsock", "virtio_ring", "virtio"],
        ),
        module(
            "vmw_vsock_virtio_transport",
            &[19],
            &[
                "vmw_vsock_virtio_transport_common",
                "vsock",
                "virtio",
                "virtio_ring",
            ],
        ),
    ]
}

fn loaded(modules: &[ModInfo], devices: &[u32]) -> Vec<String> {
    let mut devices = || devices.iter().copied().collect::<BTreeSet<u32>>();
    (0..modules.len())
        .filter(|&i| needed(modules, i, &mut devices))
        .map(|i| modules[i].name.clone())
        .collect()
}

#[test]
fn the_lists_lines_are_the_decisions_input() {
    let listed = banger_proto::modules::parse_module_list(
        "virtio_net.ko virtio=00000001 depends=net_failover,virtio-ring\nany-virtio.ko virtio=* depends=\nold.ko\n",
    );
    let infos: Vec<ModInfo> = listed.iter().map(ModInfo::from_listed).collect();
    assert_eq!(
        infos,
        [
            module("virtio_net", &[1], &["net_failover", "virtio_ring"]),
            ModInfo {
                name: "any_virtio".into(),
                virtio_ids: vec![None],
                depends: vec![],
            },
            module("old", &[], &[]),
        ]
    );
    assert!(
        needed(&infos, 1, &mut || [2].into()),
        "a wildcard drives anything"
    );
    assert!(
        needed(&infos, 2, &mut || [2].into()),
        "nothing known: load it"
    );
}

#[test]
fn without_a_network_device_the_network_and_vsock_modules_are_skipped() {
    assert_eq!(
        loaded(&debian_cloud(), &[2, 2, 2, 3]),
        [
            "virtio_ring",
            "virtio",
            "virtio_mmio",
            "virtio_blk",
            "virtio_console"
        ]
    );
}

#[test]
fn a_network_device_brings_virtio_net_and_its_helpers() {
    assert_eq!(
        loaded(&debian_cloud(), &[1, 2, 3]),
        [
            "virtio_ring",
            "virtio",
            "virtio_mmio",
            "virtio_blk",
            "virtio_console",
            "failover",
            "net_failover",
            "virtio_net"
        ]
    );
    assert_eq!(
        loaded(&debian_cloud(), &[2, 3, 19]).len(),
        8,
        "vsock's three"
    );
}

#[test]
fn an_empty_bus_loads_everything() {
    assert_eq!(loaded(&debian_cloud(), &[]).len(), debian_cloud().len());
}

#[test]
fn the_bus_is_read_only_when_a_driver_is_decided() {
    let mut reads = 0;
    let modules = debian_cloud();
    for i in 0..3 {
        assert!(needed(&modules, i, &mut || {
            reads += 1;
            [2].into()
        }));
    }
    assert_eq!(reads, 0, "the transport and core need no device list");
}

#[test]
fn virtio_devices_reads_each_devices_id() {
    let bus = tempfile::tempdir().unwrap();
    for (dev, id) in [("virtio0", "0x0002\n"), ("virtio1", "0x0003\n")] {
        std::fs::create_dir(bus.path().join(dev)).unwrap();
        std::fs::write(bus.path().join(dev).join("device"), id).unwrap();
    }
    assert_eq!(virtio_devices(bus.path()), [2, 3].into());
    assert!(virtio_devices(&bus.path().join("absent")).is_empty());
}

/// A real module of the kernel banger's images boot, when an image build
/// has unpacked it into the e2e cache.
#[test]
fn a_debian_module_loses_exactly_its_signature() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let extract = target.join("e2e-cache/banger/extract");
    let Some(modules) = std::fs::read_dir(&extract).ok().and_then(|d| {
        d.flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains("linux-image-"))
    }) else {
        eprintln!("skipped: no unpacked kernel under {}", extract.display());
        return;
    };
    let Some(release) = std::fs::read_dir(modules.join("lib/modules"))
        .ok()
        .and_then(|mut d| d.next())
        .and_then(Result::ok)
    else {
        return;
    };
    let net = release.path().join("kernel/drivers/net/virtio_net.ko");
    let Ok(bytes) = std::fs::read(&net) else {
        eprintln!("skipped: no {}", net.display());
        return;
    };
    // Debian signs its modules: the unsigned one is the ELF file alone.
    let unsigned = without_signature(&bytes);
    assert!(unsigned.len() + 500 < bytes.len(), "a signature is removed");
    assert_eq!(without_signature(unsigned), unsigned);
    let shoff = u64::from_le_bytes(unsigned[0x28..0x30].try_into().unwrap()) as usize;
    let (shentsize, shnum) = (
        u16::from_le_bytes([unsigned[0x3a], unsigned[0x3b]]) as usize,
        u16::from_le_bytes([unsigned[0x3c], unsigned[0x3d]]) as usize,
    );
    assert_eq!(
        shoff + shentsize * shnum,
        unsigned.len(),
        "it ends with the section headers, as the linker left it"
    );
}

/// A module signed as `sign-file` does: signature, 12 bytes of
/// `struct module_signature`, marker.
fn signed(body: &[u8], sig: &[u8], signer: u8, key_id: u8) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend(std::iter::repeat_n(b'k', usize::from(signer + key_id)));
    out.extend_from_slice(sig);
    out.extend_from_slice(&[0, 0, 2, signer, key_id, 0, 0, 0]);
    out.extend_from_slice(&(sig.len() as u32).to_be_bytes());
    out.extend_from_slice(b"~Module signature appended~\n");
    out
}

#[test]
fn a_signature_is_cut_off_and_anything_else_left_whole() {
    let body = b"\x7fELF\x02\x01 a module's sections".to_vec();
    assert_eq!(
        without_signature(&signed(&body, &[7; 300], 0, 0)),
        &body[..]
    );
    assert_eq!(without_signature(&signed(&body, &[7; 40], 3, 5)), &body[..]);
    assert_eq!(without_signature(&body), &body[..], "unsigned");
    let mut lying = signed(&body, &[7; 40], 0, 0);
    let n = lying.len();
    lying[n - 32..n - 28].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        without_signature(&lying),
        &lying[..],
        "a length past the start is not trusted"
    );
    assert_eq!(
        without_signature(b"~Module signature appended~\n"),
        b"~Module signature appended~\n"
    );
}

#[test]
fn the_bus_is_read_until_devices_show_and_then_no_more() {
    let reads = std::cell::Cell::new(0);
    let bus = std::cell::RefCell::new(BTreeSet::new());
    let mut devices = read_once_found(|| {
        reads.set(reads.get() + 1);
        bus.borrow().clone()
    });
    assert!(devices().is_empty());
    assert!(devices().is_empty());
    assert_eq!(reads.get(), 2, "an empty bus is read again");
    bus.borrow_mut().extend([2, 3]);
    assert_eq!(devices(), BTreeSet::from([2, 3]));
    bus.borrow_mut().insert(1);
    assert_eq!(devices(), BTreeSet::from([2, 3]));
    assert_eq!(
        reads.get(),
        3,
        "once devices showed, the bus is not read again"
    );
}
