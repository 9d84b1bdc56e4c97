//! `banger vm snapshot VM [--name N] [--stop]`, `vm snapshot list|delete`,
//! `vm restore VM SNAPSHOT`, `vm fork VM`: taking and restoring follow the daemon's
//! operation with progress on stderr; the snapshot's name goes to stdout.

use anyhow::Context as _;
use banger_api::{ForkVm, OperationRef, RestoreSnapshot, Snapshot, TakeSnapshot};

use super::Context;
use crate::cli::{ForkArgs, SnapshotArgs, SnapshotCommand};
use crate::client::path_segment;
use crate::output::{self, Table};
use crate::progress::{self, Style};
use crate::units::{format_age, format_bytes};
use banger_sys::clock::unix_now;

pub async fn run(ctx: &Context, args: SnapshotArgs) -> anyhow::Result<i32> {
    match args.command {
        Some(SnapshotCommand::List(a)) => list(ctx, &a.name, a.json).await,
        Some(SnapshotCommand::Delete(a)) => delete(ctx, &a.vm, &a.snapshot).await,
        None => {
            let vm = args
                .vm
                .context("name the vm to snapshot: banger vm snapshot VM [--name N]")?;
            take(ctx, &vm, args.name, args.stop).await
        }
    }
}

/// `vm snapshot VM`: prints the snapshot's name.
async fn take(ctx: &Context, vm: &str, name: Option<String>, stop: bool) -> anyhow::Result<i32> {
    if let Some(n) = &name {
        banger_api::validate_snapshot_name(n).map_err(anyhow::Error::msg)?;
    }
    let client = ctx.client().await?;
    let path = format!("/v1/vms/{}/snapshots", path_segment(vm));
    let op: OperationRef = client.post(&path, &TakeSnapshot { name, stop }).await?;
    let done = progress::follow(&client, &op, Style::for_stderr()).await?;
    let snap = done.target.rsplit('/').next().unwrap_or_default();
    output::print_str(&format!("{snap}\n"));
    Ok(0)
}

async fn list(ctx: &Context, vm: &str, json: bool) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let path = format!("/v1/vms/{}/snapshots", path_segment(vm));
    let raw: serde_json::Value = client.get(&path).await?;
    if json {
        output::print_json(&raw)?;
        return Ok(0);
    }
    let snaps: Vec<Snapshot> = serde_json::from_value(raw)
        .context("the daemon's snapshot list is not what this banger expects")?;
    let now = unix_now();
    let mut table = Table::new(&["NAME", "SIZE", "SHARED", "AGE"]);
    for s in &snaps {
        table.row(vec![
            s.name.clone(),
            format_bytes(s.size_bytes),
            match s.shared_bytes {
                0 => "-".into(),
                n => format_bytes(n),
            },
            format_age(now, s.created_at),
        ]);
    }
    table.print();
    Ok(0)
}

async fn delete(ctx: &Context, vm: &str, snapshot: &str) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let path = format!(
        "/v1/vms/{}/snapshots/{}",
        path_segment(vm),
        path_segment(snapshot)
    );
    client.delete::<()>(&path).await?;
    Ok(0)
}

/// `vm restore VM SNAPSHOT`.
pub async fn restore(ctx: &Context, vm: &str, snapshot: &str) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    super::ssh::close_master(ctx, vm);
    let path = format!("/v1/vms/{}/restore", path_segment(vm));
    let body = RestoreSnapshot {
        snapshot: snapshot.into(),
    };
    let op: OperationRef = client.post(&path, &body).await?;
    progress::follow(&client, &op, Style::for_stderr()).await?;
    Ok(0)
}

/// `vm fork VM [--count N] [--prefix P]`: the daemon's fork operation
/// (a snapshot of the running VM, N VMs created from it at once, restored
/// rather than booted, the snapshot removed). Prints the new VMs' names.
pub async fn fork(ctx: &Context, args: ForkArgs) -> anyhow::Result<i32> {
    let prefix = args.prefix.unwrap_or_else(|| format!("{}-fork", args.vm));
    let names: Vec<String> = (1..=args.count).map(|i| format!("{prefix}-{i}")).collect();
    for n in &names {
        banger_api::validate_vm_name(n).map_err(anyhow::Error::msg)?;
    }
    let client = ctx.client().await?;
    let path = format!("/v1/vms/{}/fork", path_segment(&args.vm));
    let body = ForkVm {
        count: args.count,
        prefix: Some(prefix),
    };
    let op: OperationRef = client.post(&path, &body).await?;
    progress::follow(&client, &op, Style::for_stderr()).await?;
    output::print_str(&names.iter().map(|n| format!("{n}\n")).collect::<String>());
    Ok(0)
}
