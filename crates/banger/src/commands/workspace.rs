//! `banger vm workspace prepare|export`: thin calls to the daemon, which
//! copies the checkout through the agent (so any API client can) and
//! brings the guest's commits back; this side only resolves paths and
//! follows the operation's progress.

use anyhow::Context as _;
use banger_api::{ExportWorkspace, OperationRef, PrepareWorkspace, WorkspaceMode};
use std::path::{Path, PathBuf};

use super::Context;
use crate::cli::{ExportArgs, PrepareArgs};
use crate::client::{Client, path_segment};
use crate::progress::{self, Style};

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    Ok(cwd.join(p))
}

/// Prepares the workspace of `vm` from `from` and follows it.
pub async fn prepare_in(
    client: &Client,
    vm: &str,
    req: PrepareWorkspace,
    style: Style,
) -> anyhow::Result<()> {
    let path = format!("/v1/vms/{}/workspace", path_segment(vm));
    let op: OperationRef = client.post(&path, &req).await?;
    progress::follow(client, &op, style).await?;
    Ok(())
}

pub async fn export_from(
    client: &Client,
    vm: &str,
    req: ExportWorkspace,
    style: Style,
) -> anyhow::Result<()> {
    let path = format!("/v1/vms/{}/workspace/export", path_segment(vm));
    let op: OperationRef = client.post(&path, &req).await?;
    progress::follow(client, &op, style).await?;
    Ok(())
}

pub async fn prepare(ctx: &Context, args: PrepareArgs) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let from = absolute(args.from.as_deref().unwrap_or(Path::new(".")))?;
    let req = PrepareWorkspace {
        from: from.to_string_lossy().into_owned(),
        mode: args.mode,
        git_ref: args.git_ref,
        exclude: args.exclude,
        guest_path: args.guest_path,
        depth: args.depth,
    };
    prepare_in(&client, &args.name, req, Style::for_stderr()).await?;
    Ok(0)
}

pub async fn export(ctx: &Context, args: ExportArgs) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let patch = match &args.patch {
        Some(p) => Some(absolute(p)?.to_string_lossy().into_owned()),
        None => None,
    };
    let req = ExportWorkspace {
        branch: args.branch,
        patch,
        include_uncommitted: args.include_uncommitted,
        guest_path: args.guest_path,
    };
    export_from(&client, &args.name, req, Style::for_stderr()).await?;
    Ok(0)
}

/// What `vm run` prepares: the checkout around the current directory, as
/// git sees it.
pub fn run_request(top: &Path) -> PrepareWorkspace {
    PrepareWorkspace {
        from: top.to_string_lossy().into_owned(),
        mode: WorkspaceMode::Tracked,
        ..Default::default()
    }
}
