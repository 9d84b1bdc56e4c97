//! `banger daemon status|stop`. Neither starts the daemon: status reports
//! "not running" (exit 1), stop asks it to shut down and waits until its
//! socket stops answering and its process has exited.

use std::time::{Duration, Instant};

use anyhow::bail;
use banger_api::DaemonStatus;
use banger_api::paths::Paths;

use super::Context;
use crate::cli::DaemonCommand;
use crate::client::Client;
use crate::daemon;
use crate::exit;
use crate::output::{self, render_fields};
use crate::units::format_age;
use banger_sys::clock::unix_now;

const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(20);

pub async fn run(ctx: &Context, command: DaemonCommand) -> anyhow::Result<i32> {
    let client = Client::new(ctx.paths.socket());
    match command {
        DaemonCommand::Status(flag) => status(&ctx.paths, &client, flag.json).await,
        DaemonCommand::Stop => stop(&ctx.paths, &client).await,
    }
}

async fn status(paths: &Paths, client: &Client, json: bool) -> anyhow::Result<i32> {
    let Some(status) = daemon::status(paths, client).await? else {
        if json {
            let socket = client.socket().display().to_string();
            output::print_json(&serde_json::json!({ "running": false, "socket": socket }))?;
        } else {
            output::print_str("not running\n");
        }
        return Ok(exit::FAILURE);
    };
    if json {
        output::print_json(&status)?;
    } else {
        output::print_str(&status_fields(&status, unix_now()));
    }
    Ok(0)
}

fn status_fields(status: &DaemonStatus, now: i64) -> String {
    render_fields(&[
        ("state", "running".into()),
        ("pid", status.pid.to_string()),
        ("version", status.version.clone()),
        ("uptime", format_age(now, status.started_at)),
        ("vms running", status.vms_running.to_string()),
        ("socket", status.socket.clone()),
        ("state dir", status.state_dir.clone()),
    ])
}

async fn stop(paths: &Paths, client: &Client) -> anyhow::Result<i32> {
    let Some(running) = daemon::status(paths, client).await? else {
        eprintln!("daemon is not running");
        return Ok(0);
    };
    match client.post_empty::<()>("/v1/daemon/shutdown").await {
        Ok(()) => {}
        // It may close the connection as it goes down.
        Err(err) if err.is_not_running() => {}
        Err(crate::client::ClientError::Http(_)) => {}
        Err(err) => return Err(err.into()),
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    // Gone means nothing answers and the process has exited: it stops
    // listening first, then gives open requests a moment.
    let exited = || !banger_sys::process::alive_with_arg(running.pid, "bangerd");
    while !(matches!(daemon::status(paths, client).await, Ok(None)) && exited()) {
        if Instant::now() >= deadline {
            bail!(
                "the daemon still answers on {} after {} s",
                client.socket().display(),
                STOP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    eprintln!("daemon stopped");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_of_a_missing_daemon_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::daemon::tests::paths_in(dir.path());
        let client = Client::new(paths.socket());
        assert_eq!(status(&paths, &client, false).await.unwrap(), exit::FAILURE);
        assert!(!paths.socket().exists(), "status must not start a daemon");
    }

    #[test]
    fn status_reads_as_fields() {
        let status = DaemonStatus {
            pid: 7,
            version: "0.1.0".into(),
            socket: "/r/bangerd.sock".into(),
            state_dir: "/s".into(),
            started_at: 0,
            vms_running: 1,
        };
        let text = status_fields(&status, 90);
        assert!(
            text.starts_with("state:        running\npid:          7\n"),
            "{text}"
        );
        assert!(text.contains("uptime:       1m\n"), "{text}");
    }
}
