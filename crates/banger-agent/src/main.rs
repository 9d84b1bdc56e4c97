//! `banger-agent`, the guest's `/init`: boots the guest, then serves the
//! host on the agent port until the guest powers off. See the library's
//! docs for the parts.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use banger_agent::console::{chain, log};
use banger_agent::{Agent, GuestPower, boot, devices, port, setup, shutdown};

fn main() {
    if std::env::args().any(|a| a == "--version" || a == "-V") {
        println!(
            "banger-agent {} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            banger_proto::PROTOCOL_VERSION
        );
        return;
    }
    if !banger_agent::is_init() {
        eprintln!("banger-agent: this is the guest's init and must run as PID 1 (try --version)");
        std::process::exit(2);
    }
    let booted = match boot::boot() {
        Ok(booted) => booted,
        Err(e) => {
            log(format_args!("boot failed: {}", chain(&e)));
            shutdown::power_off(false);
        }
    };
    setup::run(&booted.config);

    let ports = Path::new("/sys/class/virtio-ports");
    let name = loop {
        match devices::wait_for_port(
            ports,
            Path::new("/dev"),
            banger_proto::PORT_NAME,
            Duration::from_secs(10),
        ) {
            Some(name) => break name,
            None => log(format_args!(
                "no virtio-serial port named {} yet",
                banger_proto::PORT_NAME
            )),
        }
    };
    let path = Path::new("/dev").join(&name);

    if std::env::var_os("AGENT_DEBUG").is_some() {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(3));
                let t = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
                for l in t.lines().filter(|l| l.contains("virtio")) {
                    eprintln!("DBG irq {l}");
                }
                match std::fs::read_dir("/proc/self/task") {
                    Ok(d) => {
                        for e in d.flatten() {
                            let p = e.path();
                            let stat = std::fs::read_to_string(p.join("stat"))
                                .unwrap_or_else(|e| e.to_string());
                            let sc = std::fs::read_to_string(p.join("syscall"))
                                .unwrap_or_else(|e| e.to_string());
                            let wchan = std::fs::read_to_string(p.join("wchan"))
                                .unwrap_or_else(|e| e.to_string());
                            eprintln!(
                                "DBG task {:?} stat={} wchan={} syscall={}",
                                e.file_name(),
                                stat.split(' ').take(3).collect::<Vec<_>>().join(" "),
                                wchan,
                                sc.trim()
                            );
                        }
                    }
                    Err(e) => eprintln!("DBG task read_dir: {e}"),
                }
            }
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let port = loop {
            match port::open(&path) {
                Ok(port) => break port,
                Err(e) => {
                    log(format_args!("opening {} failed: {e}", path.display()));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        log(format_args!("serving on {}", path.display()));
        log(format_args!("ready"));
        port::serve_forever(port, Arc::new(Agent::new(Arc::new(GuestPower)))).await
    })
}
