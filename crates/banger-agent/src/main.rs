//! `banger-agent`, the guest's `/init`: boots the guest, then serves the
//! host on the agent port until the guest powers off. See the library's
//! docs for the parts.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use banger_agent::console::{Millis, chain, log, uptime};
use banger_agent::sshd::Sshd;
use banger_agent::{Agent, GuestPower, background, boot, devices, port, setup, shutdown};

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
    let crng = banger_agent::entropy::spawn_crng_init();
    let booted = match boot::boot() {
        Ok(booted) => booted,
        Err(e) => {
            log(format_args!("boot failed: {}", chain(&e)));
            shutdown::power_off(false);
        }
    };
    setup::run(&booted.config);

    let ports = Path::new("/sys/class/virtio-ports");
    let started = std::time::Instant::now();
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
    log(format_args!(
        "found the agent port ({})",
        Millis::since(started)
    ));
    match crng.map(|waiter| waiter.join()) {
        None => log(format_args!("random numbers ready at boot")),
        Some(Ok(took)) => log(format_args!("random numbers ready ({})", Millis(took))),
        Some(Err(_)) => log(format_args!("waiting for random numbers failed")),
    }

    let started = std::time::Instant::now();
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
        log(format_args!(
            "serving on {} ({})",
            path.display(),
            Millis::since(started)
        ));
        log(format_args!("ready"));
        // How long the guest took from the kernel's start: the host's
        // wait for the agent less this is QEMU and the kernel's loading.
        if let Some(up) = uptime() {
            log(format_args!("uptime at ready ({})", Millis(up)));
        }
        let sshd = Sshd {
            given: booted.config.ssh_host_key.clone(),
            ..Sshd::guest()
        };
        let mut agent = Agent::new(Arc::new(GuestPower));
        agent.sshd = sshd.program.is_file();
        *agent.network.lock().expect("not yet shared") = booted.config.network.clone();
        let agent = Arc::new(agent);
        // The guest's own work, once the host's first command has run
        // (`background.rs`): host keys may take seconds to generate.
        let (reaper, waiting) = (agent.reaper, agent.clone());
        let initramfs = booted.initramfs;
        tokio::spawn(async move {
            waiting
                .background
                .wait(background::GRACE, background::SETTLE)
                .await;
            if let Some(initramfs) = initramfs {
                boot::free_initramfs_when_idle(initramfs);
            }
            sshd.run(reaper).await
        });
        port::serve_forever(port, agent).await
    })
}
