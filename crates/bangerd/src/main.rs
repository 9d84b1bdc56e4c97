//! `bangerd`: the daemon that owns banger's state. One per user (per state
//! dir): it serves the `/v1` API on a unix socket, reconciles what a killed
//! predecessor left running, and keeps running VMs' agent sessions. VMs keep
//! running when it exits.
//!
//! Only its own user reaches it: it runs under umask 077, so all it makes
//! (store, log, disks, console logs) is owner-only; its state, runtime and
//! cache directories are 0700 and checked at start; the socket is 0600 and
//! every connection's peer uid is checked (`peer.rs`).

mod api;
mod exec;
mod peer;
mod sessions;
mod streams;
mod web;

use anyhow::Context;
use banger_api::paths::Paths;
use banger_core::config::Config;
use banger_core::store::Store;
use banger_core::{Deps, Services};

fn main() {
    // Before any thread exists: the umask is process-wide.
    banger_sys::private_dir::owner_only_umask();
    if let Err(e) = run() {
        eprintln!("bangerd: error: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BANGER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // The log is on the state dir's disk: when that is full, a line is
        // lost. Reporting that goes through eprintln!, which panics when
        // stderr cannot be written, and would take the request with it.
        .log_internal_errors(false)
        .init();
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/".into());
    let paths = Paths::resolve(
        |k| std::env::var(k).ok(),
        &home,
        banger_sys::process::euid(),
    );
    let config = Config::load(&paths.config_file)?.for_instance(&paths.state_dir);
    for dir in paths.private_dirs() {
        banger_sys::private_dir::ensure_private_dir(dir.path).context(dir.refusal())?;
    }
    // Made by an older banger, or by a CLI under a loose umask.
    for file in [paths.daemon_log(), paths.state_dir.join("banger.db")] {
        if file.exists() {
            banger_sys::private_dir::ensure_private_file(&file)?;
        }
    }
    let lock = take_lock(&paths.daemon_lock()).await?;
    // For a CLI that finds the socket taken but unanswered: whom to kill.
    {
        use std::io::Write as _;
        let _ = lock.set_len(0);
        let _ = (&lock).write_all(format!("{}\n", std::process::id()).as_bytes());
    }
    let _lock = lock;
    let api_group = config.api_group.clone();
    let web_port = config.web_port;
    let store = Store::open(&paths.state_dir.join("banger.db"))?;
    let deps = Deps::system(&config, &paths)?;
    let services = Services::new(paths.clone(), config, store, deps)?;
    let reconcile_began = std::time::Instant::now();
    services.images.reconcile();
    services
        .vms
        .reconcile()
        .await
        .context("reconcile at start-up")?;
    // `vm run --rm` VMs whose CLI ended while no daemon watched go now.
    services
        .vms
        .watch_callers()
        .context("watching the callers of vm run --rm")?;
    tracing::info!(
        ms = reconcile_began.elapsed().as_millis() as u64,
        "reconciled images and vms"
    );

    let socket = paths.socket();
    let _ = std::fs::remove_file(&socket); // we hold the lock: any socket here is stale
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    // The umask made it 0700 already; say the mode rather than rely on that.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", socket.display()))?;
    let group = shared_with_group(api_group.as_deref(), &paths.runtime_dir, &socket)?;
    let listener = peer::CheckedListener::new(
        listener,
        peer::PeerPolicy::for_daemon(banger_sys::process::euid()).with_group(group),
    );
    tracing::info!(socket = %socket.display(), pid = std::process::id(), "bangerd listening");

    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
    let app = api::app(api::AppState::new(
        &services,
        paths.clone(),
        shutdown_tx,
        web_port,
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = shutdown_rx.wait_for(|v| *v) => {}
        }
        tracing::info!("bangerd shutting down; running vms keep running");
    };
    // Followers of logs and operations never end on their own: stop
    // accepting at once, give open requests a moment, then exit.
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let app = app.into_make_service_with_connect_info::<peer::Peer>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.await;
        let _ = stopped_tx.send(());
    });
    let drain = async {
        let _ = stopped_rx.await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    };
    tokio::select! {
        r = server => r?,
        _ = drain => tracing::info!("open requests did not finish in time; exiting anyway"),
    }
    let _ = std::fs::remove_file(&socket);
    // Running VMs keep their network; an idle bridge kept for the next VM
    // would outlive its owner: it goes now.
    // Standbys are the daemon's own, not the user's: they go with it.
    services.vms.discard_standbys(None).await;
    services.network.end_idle(None);
    services.network.settle();
    Ok(())
}

/// One daemon per state dir. A predecessor that is still exiting holds the
/// lock for a moment, so wait a little before giving up.
async fn take_lock(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match banger_sys::fs::lock_exclusive(path) {
            Ok(f) => return Ok(f),
            Err(e)
                if std::time::Instant::now() < deadline
                    && e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "another bangerd already owns {}",
                        path.parent().unwrap_or(path).display()
                    )
                });
            }
        }
    }
}

/// A root daemon with `api_group`: its socket (0660) and runtime dir (0710,
/// no listing) are opened to that group, whose members the peer check then
/// admits. Returns the group's id.
fn shared_with_group(
    group: Option<&str>,
    runtime_dir: &std::path::Path,
    socket: &std::path::Path,
) -> anyhow::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let Some(name) = group else { return Ok(None) };
    if banger_sys::process::euid() != 0 {
        tracing::warn!(group = name, "api_group is for a root daemon; ignored");
        return Ok(None);
    }
    let gid = banger_sys::peer::group_id(name)
        .context("cannot read /etc/group")?
        .with_context(|| format!("api_group {name:?}: no such group; create it with groupadd"))?;
    for (path, mode) in [(runtime_dir, 0o710), (socket, 0o660)] {
        std::os::unix::fs::chown(path, Some(0), Some(gid))
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
            .with_context(|| format!("cannot open {} to group {name}", path.display()))?;
    }
    tracing::info!(group = name, gid, "the api admits root and group {name}");
    Ok(Some(gid))
}
