//! The workspaces service: a host git checkout copied into a running guest
//! as a real repository (`prepare`, done by the daemon through the agent,
//! so any API client can ask for it), and the commits made in the guest
//! since then brought back to the host as a branch or a patch series
//! (`export`), without touching the host's work tree or current branch.
//!
//! Prepare streams one archive (see [`source`]) to the agent's `unpack`,
//! which swaps the new copy in only when complete: a failed prepare keeps
//! the previous copy. The commit the guest starts at is recorded, so
//! export knows what is new.
//!
//! Export runs git in the guest (`git bundle` of the new commits, or
//! `git format-patch`), then `git fetch` from that bundle into
//! `refs/heads/<branch>` on the host.

pub mod source;

use crate::agent::AgentConn;
use crate::error::Error;
use crate::ops::{Op, Operations};
use crate::store::{Store, WorkspaceRecord};
use crate::vm::Lifecycle;
use banger_api::{ExportWorkspace, OperationKind, PrepareWorkspace, WorkspaceMode};
use banger_sys::command::{Cmd, Runner};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Where a workspace goes in the guest unless asked otherwise.
pub const DEFAULT_GUEST_PATH: &str = "/root/repo";

/// Largest bundle or patch series an export takes from the guest.
const EXPORT_LIMIT: usize = 1 << 30;

pub struct Workspaces {
    vms: Arc<Lifecycle>,
    store: Arc<Store>,
    runner: Arc<dyn Runner>,
    ops: Arc<Operations>,
}

fn guest_path(p: Option<&str>) -> Result<String, Error> {
    let p = p.unwrap_or(DEFAULT_GUEST_PATH).trim_end_matches('/');
    if !p.starts_with("/root/") || p.split('/').any(|c| c == "..") {
        return Err(Error::invalid(
            "--guest-path",
            format!("{p:?} must be an absolute path under /root/ without '..'"),
        ));
    }
    Ok(p.to_string())
}

impl Workspaces {
    pub fn new(
        vms: Arc<Lifecycle>,
        store: Arc<Store>,
        runner: Arc<dyn Runner>,
        ops: Arc<Operations>,
    ) -> Workspaces {
        Workspaces {
            vms,
            store,
            runner,
            ops,
        }
    }

    fn vm_id(&self, name: &str) -> Result<String, Error> {
        self.store
            .vm(name)?
            .map(|v| v.id)
            .ok_or_else(|| Error::VmNotFound { name: name.into() })
    }

    /// `workspace prepare`: checks the request, then copies as an operation.
    pub fn prepare(self: &Arc<Self>, name: &str, req: PrepareWorkspace) -> Result<Arc<Op>, Error> {
        let vm_id = self.vm_id(name)?;
        let dest = guest_path(req.guest_path.as_deref())?;
        source::check_excludes(&req.exclude)?;
        if req.depth == Some(0) {
            return Err(Error::invalid("--depth", "must be at least 1"));
        }
        if req.depth.is_some() && req.mode == WorkspaceMode::FullCopy {
            return Err(Error::invalid(
                "--depth",
                "is for tracked mode: full_copy copies .git as it is",
            ));
        }
        if req.git_ref.is_some() && req.mode == WorkspaceMode::FullCopy {
            return Err(Error::invalid(
                "--ref",
                "copies a commit's files, which full_copy (the tree as it is on disk) does not do",
            ));
        }
        let co = source::inspect(&*self.runner, Path::new(&req.from), req.git_ref.as_deref())?;
        let (this, name) = (self.clone(), name.to_string());
        Ok(self.ops.spawn(
            OperationKind::WorkspacePrepare,
            &name.clone(),
            |op| async move {
                let agent = this.vms.agent(&name).await?;
                this.copy(&op, &agent, &co, &req, &dest).await?;
                this.store.save_workspace(&WorkspaceRecord {
                    vm_id,
                    guest_path: dest,
                    source: co.top.to_string_lossy().into_owned(),
                    mode: req.mode.to_string(),
                    git_ref: req.git_ref.clone(),
                    base_commit: co.head.clone(),
                    prepared_at: banger_sys::clock::unix_now(),
                })?;
                Ok(())
            },
        ))
    }

    async fn copy(
        &self,
        op: &Arc<Op>,
        agent: &AgentConn,
        co: &source::Checkout,
        req: &PrepareWorkspace,
        dest: &str,
    ) -> Result<(), Error> {
        let t0 = op.begin_stage("copy", "copy the checkout");
        let (runner, co2, req2, op2) = (self.runner.clone(), co.clone(), req.clone(), op.clone());
        let produce = move |out: &mut dyn std::io::Write| -> Result<(), String> {
            let mut progress = |w: source::Written| {
                op2.progress(
                    "copy",
                    format!("{} files, {:.1} MB", w.files, w.bytes as f64 / 1e6),
                )
            };
            source::write_archive(&*runner, &co2, &req2, out, &mut progress)
                .map(drop)
                .map_err(|e| crate::error::chain(&e))
        };
        let started = Instant::now();
        let result = agent.unpack_from(dest, produce, |_| {}).await;
        match result {
            Ok(stats) => {
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let detail = format!(
                    "{} files, {:.1} MB at {:.1} MB/s",
                    stats.files,
                    stats.bytes as f64 / 1e6,
                    stats.bytes as f64 / 1e6 / secs
                );
                op.end_stage("copy", t0, None, Some(detail));
                Ok(())
            }
            Err(e) => {
                let e = Error::Transfer {
                    what: format!("cannot copy {} to {dest}", co.top.display()),
                    source: e,
                };
                op.end_stage("copy", t0, Some(crate::error::chain(&e)), None);
                Err(e)
            }
        }
    }

    /// `workspace export`: the guest's new commits into a host branch or a
    /// patch file.
    pub fn export(self: &Arc<Self>, name: &str, req: ExportWorkspace) -> Result<Arc<Op>, Error> {
        let vm_id = self.vm_id(name)?;
        let path = guest_path(req.guest_path.as_deref())?;
        let ws = self
            .store
            .workspace(&vm_id, &path)?
            .ok_or_else(|| Error::Refused {
                what: format!("vm {name:?} has no workspace at {path}"),
                hint: format!("prepare one first: banger vm workspace prepare {name} --from DIR"),
            })?;
        let target = match (&req.branch, &req.patch) {
            (Some(b), None) => {
                self.check_branch(Path::new(&ws.source), b)?;
                Target::Branch(b.clone())
            }
            (None, Some(p)) => {
                let p = PathBuf::from(p);
                if !p.is_absolute() {
                    return Err(Error::invalid(
                        "--patch",
                        format!("{} is not an absolute path", p.display()),
                    ));
                }
                if p.exists() {
                    return Err(Error::Refused {
                        what: format!("{} already exists", p.display()),
                        hint: "pick another --patch file or remove it".into(),
                    });
                }
                Target::Patch(p)
            }
            _ => {
                return Err(Error::invalid(
                    "--branch/--patch",
                    "give exactly one: a branch to create in the host checkout, or a patch file",
                ));
            }
        };
        let (this, name) = (self.clone(), name.to_string());
        Ok(self.ops.spawn(
            OperationKind::WorkspaceExport,
            &name.clone(),
            |op| async move {
                let agent = this.vms.agent(&name).await?;
                this.run_export(&op, &agent, &ws, &target, req.include_uncommitted)
                    .await
            },
        ))
    }

    fn check_branch(&self, repo: &Path, branch: &str) -> Result<(), Error> {
        let valid = self
            .runner
            .run(&Cmd::new("git").args(["check-ref-format", "--branch", branch]))
            .is_ok();
        if !valid {
            return Err(Error::invalid(
                "--branch",
                format!("{branch:?} is not a valid branch name"),
            ));
        }
        let exists = self
            .runner
            .run(
                &Cmd::new("git")
                    .arg("-C")
                    .arg(repo)
                    .args(["rev-parse", "--verify", "--quiet"])
                    .arg(format!("refs/heads/{branch}")),
            )
            .is_ok();
        if exists {
            return Err(Error::Refused {
                what: format!("branch {branch:?} already exists in {}", repo.display()),
                hint: format!(
                    "pick another --branch, or delete it first: git -C {} branch -D {branch}",
                    repo.display()
                ),
            });
        }
        Ok(())
    }

    async fn run_export(
        &self,
        op: &Op,
        agent: &AgentConn,
        ws: &WorkspaceRecord,
        target: &Target,
        include_uncommitted: bool,
    ) -> Result<(), Error> {
        let base = ws.base_commit.clone().unwrap_or_default();
        let format = match target {
            Target::Branch(_) => "bundle",
            Target::Patch(_) => "patch",
        };
        let out = op
            .stage("collect", "collect the guest's commits", async {
                let argv = [
                    "sh",
                    "-c",
                    EXPORT_SCRIPT,
                    "sh",
                    ws.guest_path.as_str(),
                    base.as_str(),
                    if include_uncommitted { "1" } else { "0" },
                    format,
                ];
                let out = agent.run(&argv, Some("/root"), &[], EXPORT_LIMIT).await?;
                match out.code {
                    0 => Ok(out.stdout),
                    3 => Err(Error::Refused {
                        what: "the guest has no new commits since the workspace was prepared"
                            .into(),
                        hint: "commit in the guest first, or pass --include-uncommitted".into(),
                    }),
                    _ => Err(Error::Guest(format!(
                        "git in the guest failed: {}",
                        out.stderr_tail()
                    ))),
                }
            })
            .await?;
        let repo = Path::new(&ws.source);
        match target {
            Target::Patch(path) => {
                op.stage("write", "write the patch series", async {
                    std::fs::write(path, &out)
                        .map_err(Error::io(format!("cannot write {}", path.display())))
                })
                .await
            }
            Target::Branch(branch) => {
                op.stage("fetch", "fetch into the host branch", async {
                    let bundle = tempfile::Builder::new()
                        .suffix(".bundle")
                        .tempfile()
                        .map_err(Error::io("cannot make a temporary bundle file"))?;
                    std::fs::write(bundle.path(), &out).map_err(Error::io(format!(
                        "cannot write {}",
                        bundle.path().display()
                    )))?;
                    let cmd = Cmd::new("git")
                        .arg("-C")
                        .arg(repo)
                        .args(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"])
                        .arg(bundle.path())
                        .arg(format!("refs/banger/export:refs/heads/{branch}"));
                    self.runner
                        .run(&cmd)
                        .map(drop)
                        .map_err(|source| Error::Git {
                            dir: repo.to_owned(),
                            source,
                        })
                })
                .await
            }
        }
    }
}

enum Target {
    Branch(String),
    Patch(PathBuf),
}

/// In the guest: `$1` the workspace, `$2` the base commit (may be empty),
/// `$3` 1 to commit uncommitted changes on top (in a throw-away commit,
/// through a temporary index: the guest's branch and index stay as they
/// are), `$4` `bundle` or `patch`. Exit 3: nothing new.
const EXPORT_SCRIPT: &str = r#"set -e
cd "$1"
base="$2"
tip=$(git rev-parse --verify HEAD)
if [ "$3" = 1 ] && [ -n "$(git status --porcelain)" ]; then
  idx=$(mktemp)
  trap 'rm -f "$idx"' EXIT
  cp "$(git rev-parse --git-path index)" "$idx"
  GIT_INDEX_FILE="$idx" git add -A
  tree=$(GIT_INDEX_FILE="$idx" git write-tree)
  tip=$(git commit-tree "$tree" -p "$tip" -m "Uncommitted changes from the guest")
fi
[ "$tip" != "$base" ] || exit 3
git update-ref refs/banger/export "$tip"
if [ "$4" = bundle ]; then
  if [ -n "$base" ]; then git bundle create - refs/banger/export "^$base"; else git bundle create - refs/banger/export; fi
else
  if [ -n "$base" ]; then git format-patch --stdout "$base..refs/banger/export"; else git format-patch --stdout --root refs/banger/export; fi
fi
"#;
