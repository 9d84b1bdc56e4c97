//! The QEMU command line and handle checks, built from specs without booting.

use super::*;
use crate::engine::Drive;

fn spec(accel: Accel) -> MachineSpec {
    MachineSpec {
        vm_id: "abc".into(),
        name: "web".into(),
        cpus: 2,
        memory_mib: 512,
        kernel: "/img/vmlinux".into(),
        initrd: Some("/img/initrd.img".into()),
        cmdline_extra: String::new(),
        drives: vec![Drive {
            path: "/vm/root.qcow2".into(),
            format: DriveFormat::Qcow2,
            serial: "banger-root",
            read_only: false,
        }],
        nics: vec![],
        console_log: "/vm/console.log".into(),
        engine_log: "/vm/qemu.log".into(),
        run_dir: "/run/b/abc".into(),
        state_dir: "/vm".into(),
        accel,
        tsc_khz: Some(2_300_000),
        tcg_aslr: false,
    }
}

fn has_pair(a: &[String], flag: &str, value: &str) -> bool {
    a.windows(2).any(|w| w[0] == flag && w[1] == value)
}

#[test]
fn tcg_gets_software_cpu_and_tsc_rate() {
    let a = argv(&spec(Accel::Tcg));
    assert!(has_pair(&a, "-accel", "tcg"));
    assert!(has_pair(&a, "-cpu", "qemu64,+rdrand"));
    let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
    assert!(append.contains("tsc_early_khz=2300000"), "{append}");
    assert!(append.contains("random.trust_cpu=on"), "{append}");
    assert!(append.contains("norandmaps"), "{append}");
}

#[test]
fn tcg_keeps_aslr_when_the_config_says_so() {
    let mut s = spec(Accel::Tcg);
    s.tcg_aslr = true;
    assert!(!kernel_cmdline(&s).contains("norandmaps"));
}

#[test]
fn kvm_gets_host_cpu_and_no_tsc_override() {
    let a = argv(&spec(Accel::Kvm));
    assert!(has_pair(&a, "-accel", "kvm") && has_pair(&a, "-cpu", "host"));
    assert!(!a.iter().any(|x| x.contains("tsc_early_khz")));
    // ASLR costs a KVM guest nothing.
    assert!(!a.iter().any(|x| x.contains("norandmaps")));
}

#[test]
fn drives_are_found_by_serial_and_the_agent_port_by_name() {
    let a = argv(&spec(Accel::Tcg));
    assert!(has_pair(
        &a,
        "-drive",
        "id=disk0,file=/vm/root.qcow2,format=qcow2,if=none,werror=stop"
    ));
    assert!(has_pair(
        &a,
        "-device",
        "virtio-blk-device,drive=disk0,serial=banger-root"
    ));
    assert!(has_pair(
        &a,
        "-device",
        "virtserialport,chardev=agent,name=org.banger.agent"
    ));
    assert!(has_pair(
        &a,
        "-qmp",
        "unix:/run/b/abc/qmp.sock,server=on,wait=off"
    ));
    // A second monitor carries the events a disk error raises.
    assert!(has_pair(
        &a,
        "-qmp",
        "unix:/run/b/abc/events.sock,server=on,wait=off"
    ));
    assert!(has_pair(&a, "-smp", "2") && has_pair(&a, "-m", "512M"));
}

#[test]
fn commas_in_paths_are_doubled_inside_option_strings() {
    let mut sp = spec(Accel::Tcg);
    sp.drives[0].path = "/vm/a,b/root.qcow2".into();
    sp.console_log = "/vm/a,b/console.log".into();
    sp.run_dir = "/run/x,file=/etc/shadow".into();
    sp.kernel = "/img/k,1".into();
    let a = argv(&sp);
    assert!(has_pair(
        &a,
        "-drive",
        "id=disk0,file=/vm/a,,b/root.qcow2,format=qcow2,if=none,werror=stop"
    ));
    assert!(has_pair(
        &a,
        "-chardev",
        "file,id=console,path=/vm/a,,b/console.log,append=on"
    ));
    assert!(has_pair(
        &a,
        "-chardev",
        "socket,id=agent,path=/run/x,,file=/etc/shadow/agent.sock,server=on,wait=off"
    ));
    assert!(has_pair(
        &a,
        "-qmp",
        "unix:/run/x,,file=/etc/shadow/qmp.sock,server=on,wait=off"
    ));
    assert!(
        has_pair(&a, "-kernel", "/img/k,1"),
        "a plain argument is not an option string"
    );
}

/// An engine whose "QEMU" is `binary`.
fn engine(binary: &str, cache: &Path) -> QemuEngine {
    QemuEngine::new(
        binary.into(),
        AccelChoice::Auto,
        cache,
        Arc::new(banger_sys::command::SystemRunner),
        Arc::new(banger_sys::spawn::SystemSpawner),
    )
}

fn handles(pid: u32, control_socket: &str) -> Handles {
    Handles {
        pid,
        accel: Accel::Tcg,
        agent_socket: "/r/agent.sock".into(),
        control_socket: control_socket.into(),
        started_at: 0,
    }
}

/// Runs `program args…` until dropped, once it has exec'd.
struct Running(std::process::Child);

impl Running {
    fn start(program: &str, args: &[&str]) -> Running {
        let child = std::process::Command::new(program)
            .args(args)
            .spawn()
            .unwrap();
        let pid = child.id();
        let t0 = Instant::now();
        while banger_sys::process::cmdline(pid).is_none_or(|a| a.len() <= args.len())
            && t0.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        Running(child)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_unrelated_process_is_not_an_engine_whatever_the_handles_say() {
    let cache = tempfile::tempdir().unwrap();
    let qemu = engine("qemu-system-x86_64", cache.path());
    let sleep = Running::start("sleep", &["100"]);
    let pid = sleep.0.id();
    // An empty control socket is a substring of every argument.
    assert!(!qemu.alive(&handles(pid, "")));
    assert!(!qemu.alive(&handles(pid, "100")));
    assert!(!qemu.alive(&handles(0, "")));
    // Nor is it ours to stop: stop returns without a signal.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(qemu.stop(&handles(pid, ""), Duration::from_millis(10)))
        .unwrap();
    assert!(banger_sys::process::alive(pid), "the sleep still runs");
}

#[test]
fn an_engine_is_its_binary_with_its_exact_qmp_argument() {
    // `sh` stands in for QEMU: it carries the -qmp argument unchanged.
    let cache = tempfile::tempdir().unwrap();
    let qmp = qmp_arg(Path::new("/run/b/abc/qmp.sock"));
    let fake = Running::start("sh", &["-c", "sleep 100; :", "qemu", "-qmp", &qmp]);
    let pid = fake.0.id();
    let sh = engine("sh", cache.path());
    assert!(sh.alive(&handles(pid, "/run/b/abc/qmp.sock")));
    assert!(
        !sh.alive(&handles(pid, "/run/b/abc")),
        "a prefix of the socket is not the socket"
    );
    assert!(!sh.alive(&handles(pid, "/run/b/other/qmp.sock")));
    assert!(
        !engine("sleep", cache.path()).alive(&handles(pid, "/run/b/abc/qmp.sock")),
        "another binary with the same arguments"
    );
    assert!(!engine("/nonexistent/qemu", cache.path()).alive(&handles(pid, "/run/b/abc/qmp.sock")));
}

#[test]
fn nics_become_virtio_net_devices() {
    let mut sp = spec(Accel::Tcg);
    sp.nics = vec![Nic::Tap {
        ifname: "bgtap3".into(),
        mac: "52:54:00:01:02:03".into(),
    }];
    let a = argv(&sp);
    assert!(has_pair(
        &a,
        "-netdev",
        "tap,id=net0,ifname=bgtap3,script=no,downscript=no"
    ));
    assert!(has_pair(
        &a,
        "-device",
        "virtio-net-device,netdev=net0,mac=52:54:00:01:02:03"
    ));
    sp.nics = vec![Nic::User {
        mac: "52:54:00:01:02:03".into(),
        restrict: true,
        forwards: vec![
            banger_api::PortForward {
                host: 2222,
                guest: 22,
            },
            banger_api::PortForward {
                host: 8080,
                guest: 80,
            },
        ],
    }];
    let a = argv(&sp);
    assert!(has_pair(
        &a,
        "-netdev",
        "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80"
    ));
}

#[test]
fn a_stream_nic_connects_to_its_socket_as_a_client() {
    let mut sp = spec(Accel::Tcg);
    sp.nics = vec![Nic::Stream {
        socket: "/run/b/a,b/net.sock".into(),
        mac: "52:54:00:01:02:03".into(),
    }];
    let a = argv(&sp);
    assert!(has_pair(
        &a,
        "-netdev",
        "stream,id=net0,server=off,addr.type=unix,addr.path=/run/b/a,,b/net.sock"
    ));
    assert!(has_pair(
        &a,
        "-device",
        "virtio-net-device,netdev=net0,mac=52:54:00:01:02:03"
    ));
}

#[test]
fn a_booted_guests_ram_is_a_shared_memfd_never_a_file_on_the_state_disk() {
    let a = argv(&spec(Accel::Tcg));
    assert!(has_pair(&a, "-M", "microvm,memory-backend=mem"));
    assert!(has_pair(
        &a,
        "-object",
        "memory-backend-memfd,id=mem,size=512M,share=on"
    ));
    assert!(!a.iter().any(|arg| arg.contains("mem-path")), "{a:?}");
}
