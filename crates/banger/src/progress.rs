//! Following an operation and showing its stages on stderr, so stdout stays
//! clean for `--json` and command output. On a terminal each running stage
//! is a spinner that turns into `✓ <label>  <duration>` or
//! `✗ <label>: <error>`; elsewhere each finished stage is one plain line,
//! `  <label> ... ok (123 ms)`. The one-line summary after `done` is printed
//! here too; a failed operation becomes an error for `main` to print.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::anyhow;
use banger_api::{Operation, OperationEvent, OperationKind, OperationRef, OperationState};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::Client;
use crate::exit::{ExitError, INTERRUPTED};
use crate::terminal;
use crate::units::format_duration_ms;

/// How to show an operation's stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Spinners, for a terminal.
    Live,
    /// One line per finished stage, for logs and pipes.
    Plain,
    /// Nothing (cleanup after `vm run --rm`).
    Quiet,
}

impl Style {
    /// Live on a terminal, plain otherwise.
    pub fn for_stderr() -> Style {
        if terminal::stderr_is_terminal() {
            Style::Live
        } else {
            Style::Plain
        }
    }
}

/// Follows the operation to its end, rendering it in `style`, and prints the
/// summary unless quiet. A failed operation is an error carrying its message.
pub async fn follow(client: &Client, op: &OperationRef, style: Style) -> anyhow::Result<Operation> {
    follow_with(client, op, style, false).await
}

/// Stages shown only with `--verbose`: the create's choice between a warm
/// snapshot and a boot, and why.
const VERBOSE_ONLY: &[&str] = &["warm"];

/// [`follow`], showing the [`VERBOSE_ONLY`] stages too when `verbose`.
pub async fn follow_with(
    client: &Client,
    op: &OperationRef,
    style: Style,
    verbose: bool,
) -> anyhow::Result<Operation> {
    follow_inner(client, op, style, verbose, false).await
}

/// [`follow`] for an operation the daemon can cancel (an image build or
/// register): Ctrl-C asks it to (see [`follow_cancelling`]).
pub async fn follow_cancellable(
    client: &Client,
    op: &OperationRef,
    style: Style,
) -> anyhow::Result<Operation> {
    follow_inner(client, op, style, false, true).await
}

async fn follow_inner(
    client: &Client,
    op: &OperationRef,
    style: Style,
    verbose: bool,
    cancellable: bool,
) -> anyhow::Result<Operation> {
    let mut renderer = Renderer::new(style, std::io::stderr());
    renderer.verbose = verbose;
    let follow = client.follow_operation(&op.id, |event| renderer.event(event));
    let operation = if cancellable {
        follow_cancelling(client, op, async { Ok(follow.await?) }).await
    } else {
        follow.await.map_err(anyhow::Error::from)
    };
    renderer.finish();
    let operation = match operation {
        // A broken stream says nothing a user can act on; why it broke does.
        Err(_) if client.daemon_gone().await => anyhow::bail!(
            "the daemon stopped before the operation finished (killed, or it crashed: see \
             `banger daemon status` and its log); the next daemon settles what it left"
        ),
        operation => operation?,
    };
    if operation.state == OperationState::Failed {
        let error = operation.error.as_ref();
        let message = error.map(|e| e.message.clone()).unwrap_or_else(|| {
            format!(
                "{} of {} failed",
                kind_noun(operation.kind),
                operation.target
            )
        });
        if error.is_some_and(|e| e.code == banger_api::ErrorCode::Cancelled) {
            return Err(ExitError::new(INTERRUPTED, message).into());
        }
        return Err(anyhow!(message));
    }
    if style != Style::Quiet {
        eprintln!("{}", summary(&operation));
    }
    Ok(operation)
}

/// Follows a cancellable operation (`follow`): the first Ctrl-C (or
/// SIGTERM) asks the daemon to cancel it and the following goes on until
/// its undo is done; a second one stops waiting (exit 130), the daemon
/// still finishing the cancel.
async fn follow_cancelling(
    client: &Client,
    op: &OperationRef,
    follow: impl std::future::Future<Output = anyhow::Result<Operation>>,
) -> anyhow::Result<Operation> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );
    tokio::pin!(follow);
    let mut asked = false;
    loop {
        tokio::select! {
            done = &mut follow => return done,
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        if asked {
            return Err(ExitError::new(
                INTERRUPTED,
                format!(
                    "stopped waiting; the daemon finishes cancelling operation {}",
                    op.id
                ),
            )
            .into());
        }
        asked = true;
        eprintln!("cancelling (Ctrl-C again to stop waiting)");
        let path = format!("/v1/operations/{}/cancel", op.id);
        if let Err(e) = client.post_empty::<Operation>(&path).await {
            eprintln!("cannot cancel: {e:#}");
        }
    }
}

/// `vm web running (2.6 s)`.
pub fn summary(op: &Operation) -> String {
    let what = match op.kind {
        OperationKind::Create | OperationKind::Start | OperationKind::Restart => {
            format!("vm {} running", op.target)
        }
        OperationKind::Stop => format!("vm {} stopped", op.target),
        OperationKind::Delete => format!("vm {} deleted", op.target),
        OperationKind::ImageBuild => format!("image {} built", op.target),
        OperationKind::ImageRegister => format!("image {} registered", op.target),
        OperationKind::WorkspacePrepare => format!("workspace ready in vm {}", op.target),
        OperationKind::WorkspaceExport => format!("workspace of vm {} exported", op.target),
        OperationKind::Snapshot => format!("snapshot of vm {} taken", op.target),
        OperationKind::Restore => format!("vm {} restored", op.target),
        OperationKind::ImageWarm => format!("image {} warm", op.target),
        OperationKind::Fork => format!("vm {} forked", op.target),
        OperationKind::Standby => format!("standby of image {} ready", op.target),
    };
    match op.duration_ms {
        Some(ms) => format!("{what} ({})", format_duration_ms(ms)),
        None => what,
    }
}

fn kind_noun(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Create => "creating vm",
        OperationKind::Start => "starting vm",
        OperationKind::Stop => "stopping vm",
        OperationKind::Restart => "restarting vm",
        OperationKind::Delete => "deleting vm",
        OperationKind::ImageBuild => "building image",
        OperationKind::ImageRegister => "registering image",
        OperationKind::WorkspacePrepare => "preparing workspace",
        OperationKind::WorkspaceExport => "exporting workspace",
        OperationKind::Snapshot => "taking snapshot",
        OperationKind::Restore => "restoring vm",
        OperationKind::ImageWarm => "warming image",
        OperationKind::Fork => "forking vm",
        OperationKind::Standby => "making a standby",
    }
}

struct StageView {
    label: String,
    bar: Option<ProgressBar>,
}

/// Turns events into output; plain lines go to `out`, spinners to stderr.
pub struct Renderer<W: Write> {
    style: Style,
    out: W,
    multi: Option<MultiProgress>,
    stages: HashMap<String, StageView>,
    /// Show the [`VERBOSE_ONLY`] stages.
    pub verbose: bool,
}

impl<W: Write> Renderer<W> {
    pub fn new(style: Style, out: W) -> Self {
        let multi = (style == Style::Live)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Renderer {
            style,
            out,
            multi,
            stages: HashMap::new(),
            verbose: false,
        }
    }

    pub fn event(&mut self, event: &OperationEvent) {
        let stage = match event {
            OperationEvent::StageStarted { name, .. }
            | OperationEvent::Progress { name, .. }
            | OperationEvent::StageFinished { name, .. } => Some(name),
            _ => None,
        };
        if !self.verbose && stage.is_some_and(|n| VERBOSE_ONLY.contains(&n.as_str())) {
            return;
        }
        match event {
            OperationEvent::StageStarted { name, label } => {
                let bar = self.multi.as_ref().map(|multi| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(running_style());
                    bar.set_message(label.clone());
                    bar.enable_steady_tick(Duration::from_millis(100));
                    bar
                });
                if let Some(old) = self.stages.insert(
                    name.clone(),
                    StageView {
                        label: label.clone(),
                        bar,
                    },
                ) {
                    old.bar.inspect(ProgressBar::finish_and_clear);
                }
            }
            OperationEvent::Progress { name, message } => {
                if let Some(StageView {
                    label,
                    bar: Some(bar),
                }) = self.stages.get(name)
                {
                    bar.set_message(format!("{label}: {message}"));
                }
            }
            OperationEvent::StageFinished {
                name,
                duration_ms,
                detail,
            } => {
                let (label, bar) = self.take(name);
                let duration = format_duration_ms(*duration_ms);
                // What the stage found or made, when it says: "Debian
                // bookworm by mmdebstrap --mode=unshare, 310 MiB tree…".
                let detail = detail
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                match bar {
                    Some(bar) => {
                        bar.set_style(finished_style("green"));
                        bar.set_prefix("✓");
                        bar.finish_with_message(format!("{label}  {duration}{detail}"));
                    }
                    None => self.line(&format!("  {label} ... ok ({duration}){detail}")),
                }
            }
            OperationEvent::StageFailed {
                name,
                duration_ms,
                error,
            } => {
                let (label, bar) = self.take(name);
                match bar {
                    Some(bar) => {
                        bar.set_style(finished_style("red"));
                        bar.set_prefix("✗");
                        bar.finish_with_message(format!("{label}: {error}"));
                    }
                    None => self.line(&format!(
                        "  {label} ... failed after {}: {error}",
                        format_duration_ms(*duration_ms)
                    )),
                }
            }
            OperationEvent::Done { .. } => self.finish(),
        }
    }

    /// Clears spinners of stages that never reported an end.
    pub fn finish(&mut self) {
        for (_, stage) in self.stages.drain() {
            stage.bar.inspect(ProgressBar::finish_and_clear);
        }
    }

    fn take(&mut self, name: &str) -> (String, Option<ProgressBar>) {
        match self.stages.remove(name) {
            Some(stage) => (stage.label, stage.bar),
            None => (name.to_string(), None),
        }
    }

    fn line(&mut self, line: &str) {
        match (self.style, &self.multi) {
            (Style::Plain, _) => {
                let _ = writeln!(self.out, "{line}").and_then(|()| self.out.flush());
            }
            (Style::Live, Some(multi)) => {
                let _ = multi.println(line);
            }
            _ => {}
        }
    }
}

fn running_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}").expect("valid template")
}

fn finished_style(color: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!("{{prefix:.{color}}} {{msg}}")).expect("valid template")
}

#[cfg(test)]
mod tests {
    use banger_api::ApiError;

    use super::*;

    fn op(kind: OperationKind, state: OperationState) -> Operation {
        Operation {
            id: "op1".into(),
            kind,
            target: "web".into(),
            state,
            stages: vec![],
            error: None,
            started_at: 0,
            duration_ms: Some(2600),
        }
    }

    fn plain(events: &[OperationEvent]) -> String {
        let mut out = Vec::new();
        let mut renderer = Renderer::new(Style::Plain, &mut out);
        events.iter().for_each(|e| renderer.event(e));
        drop(renderer);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_output_is_one_line_per_finished_stage() {
        let text = plain(&[
            OperationEvent::StageStarted {
                name: "disks".into(),
                label: "prepare disks".into(),
            },
            OperationEvent::Progress {
                name: "disks".into(),
                message: "50%".into(),
            },
            OperationEvent::StageFinished {
                name: "disks".into(),
                duration_ms: 123,
                detail: None,
            },
            OperationEvent::StageStarted {
                name: "boot".into(),
                label: "boot".into(),
            },
            OperationEvent::StageFailed {
                name: "boot".into(),
                duration_ms: 2600,
                error: "qemu exited".into(),
            },
        ]);
        assert_eq!(
            text,
            "  prepare disks ... ok (123 ms)\n  boot ... failed after 2.6 s: qemu exited\n"
        );
    }

    #[test]
    fn quiet_prints_nothing() {
        let mut out = Vec::new();
        let mut renderer = Renderer::new(Style::Quiet, &mut out);
        renderer.event(&OperationEvent::StageFinished {
            name: "x".into(),
            duration_ms: 1,
            detail: None,
        });
        drop(renderer);
        assert!(out.is_empty());
    }

    #[test]
    fn summaries_say_what_happened_and_how_long_it_took() {
        assert_eq!(
            summary(&op(OperationKind::Create, OperationState::Succeeded)),
            "vm web running (2.6 s)"
        );
        assert_eq!(
            summary(&op(OperationKind::Delete, OperationState::Succeeded)),
            "vm web deleted (2.6 s)"
        );
        assert_eq!(
            summary(&op(OperationKind::ImageBuild, OperationState::Succeeded)),
            "image web built (2.6 s)"
        );
    }

    #[tokio::test]
    async fn a_failed_operation_is_an_error_with_its_message() {
        use crate::client::test_server::{json, serve};
        let mut failed = op(OperationKind::Start, OperationState::Failed);
        failed.error = Some(ApiError {
            code: banger_api::ErrorCode::Engine,
            message: "qemu exited with status 1".into(),
        });
        let body = serde_json::to_value(OperationEvent::Done { operation: failed }).unwrap();
        let server = serve(move |_| {
            let body = body.clone();
            async move {
                let mut response = json(hyper::StatusCode::OK, serde_json::Value::Null);
                *response.body_mut() = http_body_util::BodyExt::boxed(http_body_util::Full::new(
                    hyper::body::Bytes::from(format!("data: {body}\n\n")),
                ));
                response
            }
        });
        let err = follow(
            &server.client,
            &OperationRef { id: "op1".into() },
            Style::Quiet,
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "qemu exited with status 1");
    }
}
