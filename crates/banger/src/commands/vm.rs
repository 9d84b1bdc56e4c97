//! `banger vm create|start|stop|restart|delete|list|show|logs`: lifecycle
//! commands follow the daemon's operation with progress on stderr; listings
//! print tables or `--json` on stdout. `vm run` and `vm exec` have their own
//! modules.

use anyhow::Context as _;
use banger_api::text::{TerminalEscaper, escape_line, escape_text};
use banger_api::{CreateVm, OperationRef, Vm};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::Context;
use crate::cli::VmSpec;
use crate::client::{Client, path_segment};
use crate::output::{self, Table, or_dash, render_fields};
use crate::progress::{self, Style};
use crate::terminal;
use crate::units::{format_age, format_mib};
use banger_sys::clock::unix_now;

/// `vm create`: boots a VM and prints its name on stdout.
pub async fn create(ctx: &Context, spec: VmSpec) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let name = create_vm(&client, &spec, Style::for_stderr(), false).await?;
    output::print_str(&format!("{name}\n"));
    Ok(0)
}

/// Creates a VM, following its operation; returns its name.
/// Creates the VM `spec` describes. The daemon deletes it if this process
/// ends (Ctrl-C, killed) before the create has finished, and with
/// `delete_with_caller` whenever this process ends.
pub async fn create_vm(
    client: &Client,
    spec: &VmSpec,
    style: Style,
    delete_with_caller: bool,
) -> anyhow::Result<String> {
    if let Some(name) = &spec.name {
        banger_api::validate_vm_name(name).map_err(anyhow::Error::msg)?;
    }
    let body = CreateVm {
        name: spec.name.clone(),
        image: spec.image.clone(),
        cpus: spec.cpus,
        memory_mib: spec.memory,
        disk_size_mib: spec.disk_size,
        network: spec.network,
        publish: spec.publish.clone(),
        engine: None,
        allow_hosts: spec.allow_host.clone(),
        allow_cidrs: spec.allow_cidr.clone(),
        host_access: spec.host_access,
        from_snapshot: spec.from_snapshot.clone(),
        cold: spec.cold,
        delete_with_caller,
        cancel_with_caller: true,
    };
    let op: OperationRef = client.post("/v1/vms", &body).await?;
    let operation = progress::follow_with(client, &op, style, spec.verbose).await?;
    Ok(operation.target)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    fn path(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        }
    }
}

/// `vm start|stop|restart NAME`.
pub async fn lifecycle(ctx: &Context, action: Action, name: &str) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    if action != Action::Start {
        super::ssh::close_master(ctx, name);
    }
    run_action(&client, action, name, Style::for_stderr()).await?;
    Ok(0)
}

pub async fn run_action(
    client: &Client,
    action: Action,
    name: &str,
    style: Style,
) -> anyhow::Result<()> {
    let path = format!("/v1/vms/{}/{}", path_segment(name), action.path());
    let op: OperationRef = client.post_empty(&path).await?;
    progress::follow(client, &op, style).await?;
    Ok(())
}

/// `vm delete NAME...`: every name is tried; fails if any did.
pub async fn delete(ctx: &Context, names: &[String]) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    for name in names {
        super::ssh::close_master(ctx, name);
    }
    let style = Style::for_stderr();
    if let [name] = names {
        delete_vm(&client, name, style).await?;
        return Ok(0);
    }
    let mut failed = Vec::new();
    for name in names {
        if let Err(err) = delete_vm(&client, name, style).await {
            eprintln!("error: {name}: {}", escape_text(&format!("{err:#}")));
            failed.push(name.as_str());
        }
    }
    if failed.is_empty() {
        return Ok(0);
    }
    anyhow::bail!(
        "{} of {} vms were not deleted: {}",
        failed.len(),
        names.len(),
        failed.join(", ")
    )
}

pub async fn delete_vm(client: &Client, name: &str, style: Style) -> anyhow::Result<()> {
    let op: OperationRef = client
        .delete(&format!("/v1/vms/{}", path_segment(name)))
        .await?;
    progress::follow(client, &op, style).await?;
    Ok(())
}

/// `vm list`.
pub async fn list(ctx: &Context, json: bool) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let raw: serde_json::Value = client.get("/v1/vms").await?;
    if json {
        output::print_json(&raw)?;
        return Ok(0);
    }
    let vms: Vec<Vm> = serde_json::from_value(raw)
        .context("the daemon's vm list is not what this banger expects")?;
    vm_table(&vms, unix_now()).print();
    Ok(0)
}

/// A VM's state with why it is paused, as in `paused: host disk full`.
fn state_text(vm: &Vm) -> String {
    match &vm.paused {
        Some(why) => format!("{}: {why}", vm.state),
        None => vm.state.to_string(),
    }
}

fn vm_table(vms: &[Vm], now: i64) -> Table {
    let mut table = Table::new(&["NAME", "STATE", "IMAGE", "CPUS", "MEM", "AGE"]);
    for vm in vms {
        table.row(vec![
            vm.name.clone(),
            state_text(vm),
            vm.image.clone(),
            vm.cpus.to_string(),
            format_mib(vm.memory_mib),
            format_age(now, vm.created_at),
        ]);
    }
    table
}

/// `vm show NAME`.
pub async fn show(ctx: &Context, name: &str, json: bool) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let raw: serde_json::Value = client
        .get(&format!("/v1/vms/{}", path_segment(name)))
        .await?;
    if json {
        output::print_json(&raw)?;
        return Ok(0);
    }
    let vm: Vm = serde_json::from_value(raw)
        .context("the daemon's vm record is not what this banger expects")?;
    output::print_str(&vm_fields(&vm, unix_now()));
    Ok(0)
}

fn vm_fields(vm: &Vm, now: i64) -> String {
    let mut fields = vec![
        ("name", vm.name.clone()),
        ("id", vm.id.clone()),
        ("state", state_text(vm)),
        ("image", vm.image.clone()),
        ("cpus", vm.cpus.to_string()),
        ("memory", format_mib(vm.memory_mib)),
        ("disk", format_mib(vm.disk_size_mib)),
        ("created", format!("{} ago", format_age(now, vm.created_at))),
        ("accel", or_dash(vm.accel.as_ref())),
        ("pid", or_dash(vm.pid)),
        ("network", vm.network.to_string()),
        ("ip", or_dash(vm.ip.as_ref())),
        ("dns", or_dash(vm.dns_name.as_ref())),
        (
            "ports",
            if vm.ports.is_empty() {
                "-".to_string()
            } else {
                vm.ports
                    .iter()
                    .map(|p| format!("127.0.0.1:{}->{}", p.host, p.guest))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("dir", vm.dir.clone()),
    ];
    if let Some(err) = &vm.last_error {
        fields.push(("last error", escape_line(err)));
    }
    render_fields(&fields)
}

/// `vm logs NAME [-f]`: copies the console log to stdout as it streams.
/// The console is whatever the guest wrote: on a terminal its control
/// characters (but tabs and line ends) are shown escaped, so a guest cannot
/// drive the user's terminal; into a pipe or file the bytes go unchanged.
pub async fn logs(ctx: &Context, name: &str, follow: bool) -> anyhow::Result<i32> {
    let client = ctx.client().await?;
    let path = format!("/v1/vms/{}/logs?follow={follow}", path_segment(name));
    let mut body = client.get_stream(&path).await?;
    let mut stdout = tokio::io::stdout();
    let mut escaper = terminal::stdout_is_terminal().then(TerminalEscaper::new);
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the log stream broke")?;
        if let Ok(data) = frame.into_data() {
            let data = match &mut escaper {
                Some(e) => e.push(&data).into(),
                None => data,
            };
            // A closed stdout (`| head`) ends the command quietly.
            if stdout.write_all(&data).await.is_err() || stdout.flush().await.is_err() {
                return Ok(0);
            }
        }
    }
    if let Some(e) = &mut escaper {
        let _ = stdout.write_all(&e.finish()).await;
        let _ = stdout.flush().await;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use banger_api::VmState;

    use super::*;

    fn vm(name: &str, state: VmState, memory_mib: u64, created_at: i64) -> Vm {
        Vm {
            id: "id".into(),
            name: name.into(),
            state,
            image: "minimal".into(),
            cpus: 2,
            memory_mib,
            disk_size_mib: 4096,
            created_at,
            accel: Some("kvm".into()),
            pid: None,
            last_error: None,
            dir: "/d".into(),
            network: banger_api::NetworkMode::User,
            engine: banger_api::EngineKind::Qemu,
            allow: vec![],
            host_access: false,
            ip: None,
            dns_name: None,
            ports: vec![],
            paused: None,
        }
    }

    #[test]
    fn vm_list_reads_as_aligned_columns() {
        let mut full = vm("ci", VmState::Paused, 256, 940);
        full.paused = Some("host disk full".into());
        let vms = [
            vm("web", VmState::Running, 512, 995),
            vm("db-primary", VmState::Stopped, 2048, 1000 - 7200),
            full,
        ];
        assert_eq!(
            vm_table(&vms, 1000).render(),
            "NAME        STATE                   IMAGE    CPUS  MEM   AGE\n\
             web         running                 minimal  2     512M  5s\n\
             db-primary  stopped                 minimal  2     2G    2h\n\
             ci          paused: host disk full  minimal  2     256M  1m\n"
        );
    }

    #[test]
    fn vm_show_lists_the_fields_that_matter() {
        let mut v = vm("web", VmState::Failed, 512, 0);
        v.last_error = Some("qemu exited".into());
        let text = vm_fields(&v, 60);
        assert!(text.contains("state:       failed\n"), "{text}");
        assert!(text.contains("created:     1m ago\n"), "{text}");
        assert!(text.contains("pid:         -\n"), "{text}");
        assert!(text.ends_with("last error:  qemu exited\n"), "{text}");
    }
}
