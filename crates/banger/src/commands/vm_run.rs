//! `banger vm run`: get a VM (reuse the one `--name` names, starting it if
//! stopped, or create one), have the daemon prepare the git checkout we are
//! in as a workspace at `/root/repo` (see `checkout.rs`), run the command
//! there with our stdio, bring the guest's new commits back as a branch
//! with `--export`, optionally delete the VM, and exit with the command's
//! status. banger's own failures exit 125, so the guest's statuses stay
//! unambiguous.

use anyhow::bail;
use banger_api::{Vm, VmState};
use banger_proto::ExecRequest;

use super::Context;
use super::exec::exec_in_vm;
use super::vm::{Action, create_vm, delete_vm, run_action};
use crate::cli::{RunArgs, VmSpec};
use crate::client::{Client, path_segment};
use crate::progress::Style;

pub async fn run(ctx: &Context, args: RunArgs) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let checkout = if args.no_checkout {
        None
    } else {
        super::checkout::find(ctx.runner.as_ref())
    };
    let name = ensure_vm(&client, &args.spec, args.rm).await?;
    let mut request = ExecRequest {
        argv: args.command.clone(),
        tty: args.tty,
        ..Default::default()
    };
    if args.export.is_some() && checkout.is_none() {
        anyhow::bail!("--export needs a git checkout: run it inside one");
    }
    let style = Style::for_stderr();
    let result = match &checkout {
        Some(c) => {
            let req = super::workspace::run_request(&c.top);
            match super::workspace::prepare_in(&client, &name, req, style).await {
                Ok(()) => {
                    request.cwd = Some(super::checkout::guest_cwd(&c.subdir));
                    exec_in_vm(&client, &name, request).await
                }
                Err(e) => Err(e),
            }
        }
        None => exec_in_vm(&client, &name, request).await,
    };
    let result = match (result, &args.export) {
        (Ok(code), Some(branch)) => {
            let req = banger_api::ExportWorkspace {
                branch: Some(branch.clone()),
                ..Default::default()
            };
            super::workspace::export_from(&client, &name, req, style)
                .await
                .map(|()| code)
        }
        (result, _) => result,
    };
    if args.rm {
        // Also after a failed command: `--rm` promises no leftovers.
        if let Err(err) = delete_after(ctx, &client, &name).await {
            eprintln!(
                "error: vm {name} was not deleted: {}",
                banger_api::text::escape_text(&format!("{err:#}"))
            );
        }
    } else {
        eprint!("{}", next_steps(&name, &args.command));
    }
    result
}

/// `--rm`'s delete. A daemon that stopped while the command ran (killed,
/// say) is started again for it: VMs outlive their daemon.
async fn delete_after(ctx: &Context, client: &Client, name: &str) -> anyhow::Result<()> {
    let Err(err) = delete_vm(client, name, Style::Quiet).await else {
        return Ok(());
    };
    if !client.daemon_gone().await {
        return Err(err);
    }
    match delete_vm(&ctx.client().await?, name, Style::Quiet).await {
        Err(err) if api_code(&err) == Some(banger_api::ErrorCode::NotFound) => Ok(()),
        result => result,
    }
}

fn api_code(err: &anyhow::Error) -> Option<banger_api::ErrorCode> {
    err.downcast_ref::<crate::client::ClientError>()
        .and_then(|e| e.api_code())
}

/// The VM to run in: `--name`'s if it exists (started if need be), else a
/// new one; with `rm`, one the daemon deletes when this process ends, even
/// killed before it could.
async fn ensure_vm(client: &Client, spec: &VmSpec, rm: bool) -> anyhow::Result<String> {
    let style = Style::for_stderr();
    let Some(name) = &spec.name else {
        return create_vm(client, spec, style, rm).await;
    };
    let vm = match client
        .get::<Vm>(&format!("/v1/vms/{}", path_segment(name)))
        .await
    {
        Ok(vm) => vm,
        Err(err) if err.api_code() == Some(banger_api::ErrorCode::NotFound) => {
            return create_vm(client, spec, style, rm).await;
        }
        Err(err) => return Err(err.into()),
    };
    if spec.image.is_some()
        || spec.cpus.is_some()
        || spec.memory.is_some()
        || spec.disk_size.is_some()
    {
        eprintln!("note: vm {name} exists; --image, --cpus, --memory and --disk-size are ignored");
    }
    if matches!(vm.state, VmState::Creating | VmState::Deleting) {
        bail!(
            "vm {name} is {}; wait for that to finish, or pick another --name",
            vm.state
        )
    }
    if rm {
        // Deleted by the daemon if this process is killed before it can,
        // from here on (a start that follows included).
        let path = format!("/v1/vms/{}/tie", path_segment(name));
        client.post_empty::<serde_json::Value>(&path).await?;
    }
    // A paused guest's exec is refused by the daemon with what to do.
    if matches!(vm.state, VmState::Stopped | VmState::Failed) {
        run_action(client, Action::Start, name, style).await?
    }
    Ok(name.clone())
}

/// What to do with the VM `vm run` left running.
use super::ssh::shell_quote;

fn next_steps(name: &str, command: &[String]) -> String {
    let cmd = command
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "vm {name} is still running:\n  \
         banger vm exec {name} -- {cmd}\n  \
         banger vm ssh {name}\n  \
         banger vm logs {name}\n  \
         banger vm delete {name}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_steps_repeat_the_command_ready_to_paste() {
        let text = next_steps("web", &["sh".into(), "-c".into(), "exit 7".into()]);
        assert_eq!(
            text,
            "vm web is still running:\n  \
             banger vm exec web -- sh -c 'exit 7'\n  \
             banger vm ssh web\n  \
             banger vm logs web\n  \
             banger vm delete web\n"
        );
    }
}
