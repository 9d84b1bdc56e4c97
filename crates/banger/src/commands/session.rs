//! `banger vm session start|list|attach|logs|stop`: long-lived guest
//! commands the agent keeps, so they outlive this client and the daemon.
//! Attach is pipe mode over the same frame loop as `vm exec`: our stdin
//! goes to the session, its output comes here, Ctrl-C detaches.

use banger_api::{Session, StartSession};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::Context;
use super::exec::{INTERRUPT_GRACE, Interrupts, exit_code, lost_daemon, session as frames};
use super::ssh::shell_quote;
use crate::cli::{SessionArgs, SessionListArgs, SessionLogsArgs, SessionStartArgs};
use crate::client::path_segment;

fn base(vm: &str) -> String {
    format!("/v1/vms/{}/sessions", path_segment(vm))
}

pub async fn start(ctx: &Context, args: SessionStartArgs) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let req = StartSession {
        name: args.name,
        argv: args.command,
        cwd: args.cwd,
        env: args.env,
    };
    let s: Session = client.post(&base(&args.vm), &req).await?;
    eprintln!(
        "session {} started (pid {}): banger vm session attach {} {}",
        s.name,
        s.pid.map(|p| p.to_string()).unwrap_or_default(),
        args.vm,
        s.name
    );
    Ok(0)
}

pub async fn list(ctx: &Context, args: SessionListArgs) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let sessions: Vec<Session> = client.get(&base(&args.vm)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&sessions)?);
        return Ok(0);
    }
    let now = banger_sys::clock::unix_now();
    let rows: Vec<[String; 5]> = sessions
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.state.to_string(),
                s.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                crate::units::format_age(now, s.started_at),
                s.argv.join(" "),
            ]
        })
        .collect();
    let header = ["NAME", "STATE", "EXIT", "STARTED", "COMMAND"].map(String::from);
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .chain([&header])
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in std::iter::once(&header).chain(&rows) {
        println!(
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
    for s in sessions.iter().filter(|s| s.error.is_some()) {
        let error = s.error.as_deref().unwrap_or_default();
        eprintln!("{}: {}", s.name, banger_api::text::escape_line(error));
    }
    Ok(0)
}

pub async fn attach(ctx: &Context, args: SessionArgs) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let stream = client.attach(&args.vm, &args.session).await?;
    // No signal forwarding: Ctrl-C ends this client only (a detach).
    let (_control_tx, control_rx) = mpsc::channel(1);
    let end = frames(
        stream,
        tokio::io::stdin(),
        tokio::io::stdout(),
        tokio::io::stderr(),
        control_rx,
        Interrupts::new(false, INTERRUPT_GRACE),
    )
    .await;
    let why = format!(
        "the daemon stopped; the session runs on: attach again with `banger vm session attach {} {}`",
        shell_quote(&args.vm),
        shell_quote(&args.session)
    );
    exit_code(lost_daemon(&client, end, &why).await?)
}

pub async fn logs(ctx: &Context, args: SessionLogsArgs) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let path = format!(
        "{}/{}/logs?follow={}",
        base(&args.vm),
        path_segment(&args.session),
        args.follow
    );
    let mut body = client.get_stream(&path).await?;
    let mut out = tokio::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(_) if client.daemon_gone().await => anyhow::bail!(
                "the daemon stopped; the session runs on: `banger vm session logs {} {}{}` shows its output again",
                shell_quote(&args.vm),
                shell_quote(&args.session),
                if args.follow { " --follow" } else { "" }
            ),
            Err(err) => return Err(err.into()),
        };
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).await?;
            out.flush().await?;
        }
    }
    Ok(0)
}

pub async fn stop(ctx: &Context, args: SessionArgs) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let path = format!("{}/{}/stop", base(&args.vm), path_segment(&args.session));
    let s: Session = client.post_empty(&path).await?;
    eprintln!(
        "session {} {}{}",
        s.name,
        s.state,
        s.exit_code
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default()
    );
    Ok(0)
}
