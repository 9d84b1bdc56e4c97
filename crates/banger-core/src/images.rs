//! The images service: build a preset or register user files (both through
//! `banger_image`, as operations with stages), list, show, delete, and the
//! build-on-first-use of a preset a create asks for. An image is a
//! directory under `<state>/images/<name>` plus a row.
//!
//! Every build and register of a name runs under that name's build lock (the
//! one a create's build-on-first-use takes), and checks again under it that
//! the name is free. Installing, so that a crash at any step blocks no name:
//!
//! 1. build into a staging dir `.<name>.new-<random>` (removed on failure);
//! 2. a directory already at `<name>` with no row is what a crashed install
//!    or delete left: it goes (step 2 of delete);
//! 3. rename the staging dir to `<name>`;
//! 4. insert the row: from here on the image exists.
//!
//! Deleting: (1) delete the row (refused while a VM uses the image), (2)
//! rename the directory to `.<name>.trash-<random>`, (3) remove that.
//! [`Images::reconcile`] at daemon start removes staging and trash dirs,
//! directories without a row, and rows whose directory is gone.

use crate::error::Error;
use crate::ops::{Op, Operations};
use crate::store::{ImageRecord, Store};
use banger_api::paths::Paths;
use banger_api::{BuildImage, Check, CheckStatus, Image, OperationKind, Preset, RegisterImage};
use banger_image::{BuildEvent, Manifest};
use banger_sys::command::Runner;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A build request resolved: the preset and its inputs, from the flags or
/// read back from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BuildPlan {
    name: String,
    /// Replace an image of that name.
    force: bool,
    preset: Preset,
    suite: String,
    packages: Vec<String>,
    kernel_release: Option<String>,
    expect_installed: std::collections::BTreeMap<String, String>,
}

/// Checks `req` and works out what to build; reads the manifest it names.
pub(crate) fn plan_build(req: &BuildImage) -> Result<BuildPlan, Error> {
    let Some(path) = &req.from_manifest else {
        let preset: Preset = req.preset.parse()?;
        let plan = BuildPlan {
            name: req.name.clone().unwrap_or_else(|| preset.to_string()),
            force: req.force,
            preset,
            suite: req
                .suite
                .clone()
                .unwrap_or_else(|| banger_image::DebianOptions::default().suite),
            packages: req.packages.clone(),
            kernel_release: None,
            expect_installed: Default::default(),
        };
        if plan.preset != Preset::Debian && (!plan.packages.is_empty() || req.suite.is_some()) {
            return Err(Error::invalid(
                "--packages and --suite",
                format!("are for the debian preset, not {}", plan.preset),
            ));
        }
        // Bad package names and suites fail now, not a minute into a build.
        banger_image::debian_package_set(&banger_image::DebianOptions {
            suite: plan.suite.clone(),
            extra_packages: plan.packages.clone(),
        })?;
        return Ok(plan);
    };
    if !req.packages.is_empty() || req.suite.is_some() {
        return Err(Error::invalid(
            "--from-manifest",
            "takes the suite and packages from the manifest: drop --suite and --packages",
        ));
    }
    let manifest = Manifest::load_given(Path::new(path))?;
    let recipe = manifest.recipe()?;
    Ok(BuildPlan {
        name: req.name.clone().unwrap_or(manifest.name),
        force: req.force,
        suite: recipe
            .suite
            .unwrap_or_else(|| banger_image::DebianOptions::default().suite),
        preset: recipe.preset.parse()?,
        packages: recipe.packages,
        kernel_release: recipe.kernel_release,
        expect_installed: recipe.expect_installed,
    })
}

/// A blocking image builder: writes an image into the directory it is
/// given, reporting its stages.
trait Builder:
    FnOnce(PathBuf, &mut dyn FnMut(BuildEvent)) -> Result<Manifest, banger_image::ImageError>
    + Send
    + 'static
{
}

impl<F> Builder for F where
    F: FnOnce(PathBuf, &mut dyn FnMut(BuildEvent)) -> Result<Manifest, banger_image::ImageError>
        + Send
        + 'static
{
}

/// The images service.
pub struct Images {
    paths: Paths,
    configured_agent: Option<PathBuf>,
    store: Arc<Store>,
    runner: Arc<dyn Runner>,
    ops: Arc<Operations>,
    /// One build per image name at a time (a preset built on first use by
    /// two concurrent creates is built once).
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Images {
    pub fn new(
        paths: Paths,
        configured_agent: Option<PathBuf>,
        store: Arc<Store>,
        runner: Arc<dyn Runner>,
        ops: Arc<Operations>,
    ) -> Images {
        Images {
            paths,
            configured_agent,
            store,
            runner,
            ops,
            building: Mutex::new(HashMap::new()),
        }
    }

    fn images_dir(&self) -> PathBuf {
        self.paths.state_dir.join("images")
    }

    /// Image `name`'s build lock for `op`. Waiting behind another build of
    /// the name may take minutes: `op` cancelled ends the wait.
    async fn lock_build(
        &self,
        op: &Op,
        name: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, Error> {
        tokio::select! {
            guard = self.build_lock(name).lock_owned() => Ok(guard),
            _ = op.until_cancelled() => Err(Error::Cancelled {
                what: format!("the build of image {name}"),
            }),
        }
    }

    fn build_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.building
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub fn record(&self, name: &str) -> Result<ImageRecord, Error> {
        self.store
            .image(name)?
            .ok_or_else(|| Error::ImageNotFound { name: name.into() })
    }

    /// What a create naming `image` needs first: nothing when it exists,
    /// the agent to build it with when it is a preset not built yet.
    pub fn needs_build(&self, image: &str) -> Result<Option<PathBuf>, Error> {
        if self.store.image(image)?.is_some() {
            return Ok(None);
        }
        match image.parse::<Preset>() {
            Ok(_) => Ok(Some(self.agent_bin()?)),
            Err(_) => Err(Error::ImageNotFound { name: image.into() }),
        }
    }

    /// Builds the preset `image` inside `op` unless it exists by now (once,
    /// even with concurrent creates).
    pub async fn ensure_preset(
        &self,
        op: &Arc<Op>,
        image: &str,
        agent_bin: PathBuf,
    ) -> Result<(), Error> {
        let _guard = self.lock_build(op, image).await?;
        if self.store.image(image)?.is_some() {
            return Ok(());
        }
        let req = BuildImage {
            name: Some(image.to_string()),
            preset: image.to_string(),
            force: false,
            ..Default::default()
        };
        let build = self.preset_builder(op, plan_build(&req)?, agent_bin);
        self.install_image(op, image, false, build).await
    }

    /// The kernel an image boots.
    pub fn kernel(&self, image: &ImageRecord) -> Result<PathBuf, Error> {
        let img = Path::new(&image.dir);
        [banger_image::layout::VMLINUX, banger_image::layout::BZIMAGE]
            .iter()
            .map(|k| img.join(k))
            .find(|p| p.exists())
            .ok_or_else(|| Error::Io {
                context: format!(
                    "image {:?} has no kernel in {}: rebuild or re-register it",
                    image.name, image.dir
                ),
                source: std::io::ErrorKind::NotFound.into(),
            })
    }

    /// Some image's kernel, for probing the accelerator (doctor).
    pub fn any_kernel(&self) -> Option<PathBuf> {
        self.store
            .images()
            .ok()?
            .iter()
            .find_map(|i| self.kernel(i).ok())
    }

    pub fn list(&self) -> Result<Vec<Image>, Error> {
        Ok(self.store.images()?.into_iter().map(image_view).collect())
    }

    pub fn show(&self, name: &str) -> Result<Image, Error> {
        Ok(image_view(self.record(name)?))
    }

    pub fn delete(&self, name: &str) -> Result<(), Error> {
        let rec = self.record(name)?;
        if !self.store.delete_image(name)? {
            return Err(Error::ImageNotFound { name: name.into() });
        }
        discard(Path::new(&rec.dir))
    }

    /// Clears what a crashed install or delete left under the images dir
    /// (staging and trash dirs, directories without a row) and rows whose
    /// directory is gone. Run at daemon start, before any build.
    pub fn reconcile(&self) {
        let dir = self.images_dir();
        let rows = match self.store.images() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot list images to reconcile");
                return;
            }
        };
        for rec in &rows {
            if let Ok(false) = Path::new(&rec.dir).try_exists() {
                match self.store.delete_image(&rec.name) {
                    Ok(_) => {
                        tracing::warn!(image = %rec.name, dir = %rec.dir, "image directory is gone; forgot the image")
                    }
                    Err(e) => {
                        tracing::warn!(image = %rec.name, dir = %rec.dir, error = %crate::error::chain(&e), "image directory is gone")
                    }
                }
            }
        }
        // A directory is an image's when a row names it, or has its name.
        let kept: Vec<PathBuf> = rows
            .iter()
            .flat_map(|r| [PathBuf::from(&r.dir), dir.join(&r.name)])
            .collect();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let leftover = if name.starts_with('.') {
                name.contains(".new-") || name.contains(".trash-")
            } else {
                path.is_dir() && !kept.contains(&path)
            };
            if leftover {
                match discard(&path) {
                    Ok(()) => {
                        tracing::info!(dir = %path.display(), "removed what an interrupted image install or delete left")
                    }
                    Err(e) => {
                        tracing::warn!(dir = %path.display(), error = %crate::error::chain(&e), "cannot remove an interrupted image install or delete")
                    }
                }
            }
        }
    }

    /// The guest agent binary baked into images: one the guest can run
    /// (see [`find_agent_bin`]).
    pub fn agent_bin(&self) -> Result<PathBuf, Error> {
        find_agent_bin(self.configured_agent.as_deref())
    }

    pub fn build(self: &Arc<Self>, req: BuildImage) -> Result<Arc<Op>, Error> {
        let plan = plan_build(&req)?;
        let name = plan.name.clone();
        banger_api::validate_image_name(&name).map_err(|p| Error::invalid("--name", p))?;
        if !plan.force && self.store.image(&name)?.is_some() {
            return Err(Error::ImageExists {
                name,
                hint: "pass --force to rebuild it",
            });
        }
        let agent_bin = self.agent_bin()?;
        let state_dir = self.paths.state_dir.clone();
        crate::space::ensure_room(&state_dir, "building an image")?;
        let this = self.clone();
        Ok(self
            .ops
            .spawn(OperationKind::ImageBuild, &name, |op| async move {
                let (name, force) = (plan.name.clone(), plan.force);
                let build = this.preset_builder(&op, plan, agent_bin);
                this.install_exclusive(&op, &name, force, "pass --force to rebuild it", build)
                    .await
                    .map_err(|e| crate::space::explain(e, &state_dir, "building an image"))
            }))
    }

    /// What builds the image `plan` says, into the directory it is given,
    /// its programs stopped when `op` is cancelled.
    fn preset_builder(&self, op: &Op, plan: BuildPlan, agent_bin: PathBuf) -> impl Builder {
        let params = banger_image::BuildParams {
            name: plan.name.clone(),
            cache_dir: self.paths.cache_dir.clone(),
            agent_bin,
            out_dir: PathBuf::new(),
            runner: banger_sys::command::cancellable(self.runner.clone(), op.canceller()),
            kernel_release: plan.kernel_release,
            expect_installed: plan.expect_installed,
        };
        move |out_dir: PathBuf, report: &mut dyn FnMut(BuildEvent)| {
            let params = banger_image::BuildParams { out_dir, ..params };
            match plan.preset {
                Preset::Debian => {
                    let opts = banger_image::DebianOptions {
                        suite: plan.suite,
                        extra_packages: plan.packages,
                    };
                    banger_image::build_debian(&params, &opts, report)
                }
                Preset::Minimal => banger_image::build_minimal(&params, report),
            }
        }
    }

    pub fn register(self: &Arc<Self>, req: RegisterImage) -> Result<Arc<Op>, Error> {
        banger_api::validate_image_name(&req.name).map_err(|p| Error::invalid("--name", p))?;
        if self.store.image(&req.name)?.is_some() {
            return Err(Error::ImageExists {
                name: req.name,
                hint: "delete it first or pick another name",
            });
        }
        for (what, p) in [
            ("--kernel", Some(&req.kernel)),
            ("--rootfs", Some(&req.rootfs)),
            ("--initrd", req.initrd.as_ref()),
            ("--modules", req.modules.as_ref()),
        ] {
            if let Some(p) = p
                && (!Path::new(p).is_absolute() || !Path::new(p).exists())
            {
                return Err(Error::invalid(
                    what,
                    format!("{p}: no such file (give an absolute path that exists)"),
                ));
            }
        }
        let agent_bin = self.agent_bin()?;
        let name = req.name.clone();
        let this = self.clone();
        Ok(self.ops.spawn(
            OperationKind::ImageRegister,
            &req.name.clone(),
            |op| async move {
                let runner = banger_sys::command::cancellable(this.runner.clone(), op.canceller());
                let build = move |out_dir: PathBuf, report: &mut dyn FnMut(BuildEvent)| {
                    let params = banger_image::RegisterParams {
                        name: req.name,
                        kernel: req.kernel.into(),
                        rootfs: req.rootfs.into(),
                        initrd: req.initrd.map(Into::into),
                        modules: req.modules.map(Into::into),
                        agent_bin,
                        out_dir,
                        runner,
                    };
                    banger_image::register(&params, report)
                };
                let hint = "delete it first or pick another name";
                this.install_exclusive(&op, &name, false, hint, build).await
            },
        ))
    }

    /// [`Images::install_image`] under the name's build lock, refused when
    /// the name was taken (by a build that ran first, or a create's
    /// build-on-first-use) while this one waited.
    async fn install_exclusive(
        &self,
        op: &Arc<Op>,
        name: &str,
        force: bool,
        hint: &'static str,
        build: impl Builder,
    ) -> Result<(), Error> {
        let _guard = self.lock_build(op, name).await?;
        if !force && self.store.image(name)?.is_some() {
            return Err(Error::ImageExists {
                name: name.into(),
                hint,
            });
        }
        self.install_image(op, name, force, build).await
    }

    /// Runs a blocking image builder into a fresh directory and records it
    /// (the steps in the module docs); replaces an existing image of that
    /// name only when `force`. The caller holds the name's build lock.
    async fn install_image(
        &self,
        op: &Arc<Op>,
        name: &str,
        force: bool,
        build: impl Builder,
    ) -> Result<(), Error> {
        std::fs::create_dir_all(self.images_dir())
            .map_err(Error::io("cannot create the images dir"))?;
        let staging = Staging(
            self.images_dir()
                .join(format!(".{name}.new-{:08x}", rand::random::<u32>())),
        );
        let manifest = match run_builder(op, staging.0.clone(), build).await {
            Ok(manifest) => manifest,
            // The staging dir goes with `staging`; the old image stays.
            Err(_) if op.cancelled() => {
                return Err(Error::Cancelled {
                    what: format!("the build of image {name}"),
                });
            }
            Err(e) => return Err(e),
        };
        self.install_staged(name, force, staging, &manifest)
    }

    /// Steps 2-4 of an install: `staging` holds the built image.
    fn install_staged(
        &self,
        name: &str,
        force: bool,
        staging: Staging,
        manifest: &Manifest,
    ) -> Result<(), Error> {
        let final_dir = self.images_dir().join(name);
        let record = ImageRecord {
            name: name.to_string(),
            source: manifest.source.clone(),
            kernel_version: manifest.kernel_version.clone(),
            dir: final_dir.to_string_lossy().into_owned(),
            created_at: manifest.created_at,
            manifest: serde_json::to_string(manifest).expect("manifest serializes"),
        };
        if force && self.store.image(name)?.is_some() {
            self.delete(name)?;
        }
        if final_dir.exists() && self.store.image(name)?.is_none() {
            tracing::info!(image = name, dir = %final_dir.display(), "removing a directory an interrupted install or delete left");
            discard(&final_dir)?;
        }
        std::fs::rename(&staging.0, &final_dir).map_err(Error::io(format!(
            "cannot move the image into {}",
            final_dir.display()
        )))?;
        staging.moved();
        if let Err(e) = self.store.insert_image(&record) {
            let _ = discard(&final_dir);
            return Err(e.into());
        }
        Ok(())
    }
}

/// A staging directory, removed when dropped (an install that fails or is
/// cancelled at any step leaves no gigabytes behind) unless it was moved.
struct Staging(PathBuf);

impl Staging {
    fn moved(mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.0).or_else(ignore_missing) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove an image staging dir");
        }
    }
}

/// Step 1 of an install: runs the blocking `build` into `out_dir`, its
/// events as `op`'s stages.
async fn run_builder(
    op: &Arc<Op>,
    out_dir: PathBuf,
    build: impl Builder,
) -> Result<Manifest, Error> {
    let op2 = op.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        let mut started: HashMap<&'static str, Instant> = HashMap::new();
        let mut report = |ev: BuildEvent| match ev {
            BuildEvent::StageStarted { name, label } => {
                started.insert(name, op2.begin_stage(name, label));
            }
            BuildEvent::StageFinished { name, detail } => {
                let t0 = started.remove(name).unwrap_or_else(Instant::now);
                op2.end_stage(name, t0, None, detail);
            }
            BuildEvent::Progress { name, message } => op2.progress(name, message),
        };
        let out = build(out_dir, &mut report);
        if let Err(e) = &out {
            for (name, t0) in started.drain() {
                op2.end_stage(name, t0, Some(crate::error::chain(e)), None);
            }
        }
        out
    })
    .await
    .map_err(|source| Error::Task {
        task: "image build",
        source,
    })?;
    Ok(manifest?)
}

/// Removes an image directory: renamed to a trash name first, so its name
/// is free at once and a crash mid-removal leaves only trash.
fn discard(dir: &Path) -> Result<(), Error> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let base = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trash = if base.starts_with('.') {
        dir.to_owned()
    } else {
        let trash = parent.join(format!(".{base}.trash-{:08x}", rand::random::<u32>()));
        match std::fs::rename(dir, &trash) {
            Ok(()) => trash,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Io {
                    context: format!("cannot move {} aside to remove it", dir.display()),
                    source: e,
                });
            }
        }
    };
    std::fs::remove_dir_all(&trash)
        .or_else(ignore_missing)
        .map_err(Error::io(format!("cannot remove {}", trash.display())))
}

impl Images {
    /// Each image's files against their fingerprints.
    pub fn checks(&self) -> Vec<Check> {
        let images = match self.store.images() {
            Ok(i) => i,
            Err(e) => {
                return vec![crate::doctor::check(
                    "images",
                    CheckStatus::Fail,
                    crate::error::chain(&e),
                    None,
                )];
            }
        };
        if images.is_empty() {
            return vec![crate::doctor::check(
                "images",
                CheckStatus::Warn,
                "no images yet",
                Some("banger image build --preset minimal"),
            )];
        }
        images
            .into_iter()
            .map(|img| {
                let name = format!("image {}", img.name);
                match banger_image::verify(std::path::Path::new(&img.dir)) {
                    Ok(files) => {
                        let bad: Vec<String> = files
                            .iter()
                            .filter(|f| !f.is_ok())
                            .map(|f| f.to_string())
                            .collect();
                        if bad.is_empty() {
                            crate::doctor::check(
                                &name,
                                CheckStatus::Pass,
                                format!("{} files match their sha256 fingerprints", files.len()),
                                None,
                            )
                        } else {
                            crate::doctor::check(
                                &name,
                                CheckStatus::Fail,
                                bad.join("; "),
                                Some(&format!(
                                    "rebuild it: banger image build --force --name {}",
                                    img.name
                                )),
                            )
                        }
                    }
                    Err(e) => crate::doctor::check(
                        &name,
                        CheckStatus::Fail,
                        crate::error::chain(&e),
                        Some("rebuild or re-register the image"),
                    ),
                }
            })
            .collect()
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn image_view(rec: ImageRecord) -> Image {
    match serde_json::from_str::<Manifest>(&rec.manifest) {
        Ok(manifest) => Image {
            // The row names the image; a manifest copied in may say otherwise.
            name: rec.name,
            ..manifest.to_api(Path::new(&rec.dir))
        },
        // A row whose manifest is unreadable still lists; doctor flags it.
        Err(_) => Image {
            name: rec.name,
            source: rec.source,
            kernel_version: rec.kernel_version,
            created_at: rec.created_at,
            dir: rec.dir,
            ..Default::default()
        },
    }
}

/// Looks for the agent: config, `BANGER_AGENT_BIN`, next to this
/// executable, the static build beside a cargo target dir, the install dir
/// of this executable's prefix (`PREFIX/bin/bangerd` →
/// `PREFIX/lib/banger/banger-agent`, where `scripts/setup` puts it).
/// Only a statically linked agent will do (the guest runs it as PID 1 with
/// no loader or libc): one named by config or the environment is refused
/// when it is not; one found by looking is skipped, with a warning, since a
/// plain `cargo build` leaves a dynamic `banger-agent` next to bangerd.
pub fn find_agent_bin(configured: Option<&Path>) -> Result<PathBuf, Error> {
    let named = configured
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("BANGER_AGENT_BIN").map(PathBuf::from));
    if let Some(p) = named {
        banger_image::check_agent(&p).map_err(|e| Error::Image(e.into()))?;
        return Ok(p);
    }
    let exe = std::env::current_exe().map_err(|_| Error::AgentBinaryMissing)?;
    let dir = exe.parent().ok_or(Error::AgentBinaryMissing)?;
    first_static_agent([
        dir.join("banger-agent"),
        dir.join("../x86_64-unknown-linux-gnu/release/banger-agent"),
        dir.join("../../x86_64-unknown-linux-gnu/release/banger-agent"),
        dir.join("../lib/banger/banger-agent"),
    ])
}

/// The first of `candidates` that is an agent the guest can run; the
/// others that exist are skipped, and the first skipped one says why when
/// none will do.
fn first_static_agent(candidates: impl IntoIterator<Item = PathBuf>) -> Result<PathBuf, Error> {
    let mut skipped = None;
    for p in candidates.into_iter().filter(|p| p.is_file()) {
        match banger_image::check_agent(&p) {
            Ok(()) => return Ok(p),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "skipping an agent binary the guest cannot run");
                skipped.get_or_insert(e);
            }
        }
    }
    Err(match skipped {
        Some(source) => Error::AgentBinaryUnusable { source },
        None => Error::AgentBinaryMissing,
    })
}

#[cfg(test)]
mod tests;
