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
        let lock = self.build_lock(image);
        let _guard = lock.lock().await;
        if self.store.image(image)?.is_some() {
            return Ok(());
        }
        let req = BuildImage {
            name: Some(image.to_string()),
            preset: image.to_string(),
            force: false,
            ..Default::default()
        };
        let build = self.preset_builder(plan_build(&req)?, agent_bin);
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
        let this = self.clone();
        Ok(self
            .ops
            .spawn(OperationKind::ImageBuild, &name, |op| async move {
                let (name, force) = (plan.name.clone(), plan.force);
                let build = this.preset_builder(plan, agent_bin);
                this.install_exclusive(&op, &name, force, "pass --force to rebuild it", build)
                    .await
            }))
    }

    /// What builds the image `plan` says, into the directory it is given.
    fn preset_builder(&self, plan: BuildPlan, agent_bin: PathBuf) -> impl Builder {
        let params = banger_image::BuildParams {
            name: plan.name.clone(),
            cache_dir: self.paths.cache_dir.clone(),
            agent_bin,
            out_dir: PathBuf::new(),
            runner: self.runner.clone(),
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
                let runner = this.runner.clone();
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
        let lock = self.build_lock(name);
        let _guard = lock.lock().await;
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
        let manifest = run_builder(op, staging.0.clone(), build).await?;
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
/// executable, the static build beside a cargo target dir, the install dir.
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
        PathBuf::from("/usr/local/lib/banger/banger-agent"),
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
mod tests {
    use super::*;

    fn manifest_file(dir: &Path, source: &str) -> String {
        let manifest = serde_json::json!({
            "format": 1,
            "name": "dev",
            "source": source,
            "kernel_version": "6.1.0-56-cloud-amd64",
            "files": [],
            "created_at": 1,
            "agent_version": "sha256:00",
            "suite": "trixie",
            "packages": ["git", "vim"],
            "kernel_package": "linux-image-6.1.0-56-cloud-amd64=6.1.192-2",
            "installed": {"git": "1:2.47", "vim": "2:9.1"}
        });
        let path = dir.join("manifest.json");
        std::fs::write(&path, manifest.to_string()).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn a_preset_build_takes_its_flags() {
        let plan = plan_build(&BuildImage {
            preset: "debian".into(),
            packages: vec!["vim".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (plan.name.as_str(), plan.suite.as_str(), plan.kernel_release),
            ("debian", "bookworm", None)
        );
        let err = plan_build(&BuildImage {
            preset: "alpine".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("unknown preset \"alpine\""));
        let err = plan_build(&BuildImage {
            preset: "debian".into(),
            suite: Some("Bookworm!".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("invalid Debian suite"), "{err}");
        let err = plan_build(&BuildImage {
            preset: "minimal".into(),
            packages: vec!["vim".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("for the debian preset"), "{err}");
    }

    #[test]
    fn a_manifest_gives_the_preset_suite_packages_and_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan_build(&BuildImage {
            from_manifest: Some(manifest_file(dir.path(), "debian")),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(plan.name, "dev");
        assert_eq!(plan.preset, Preset::Debian);
        assert_eq!(plan.suite, "trixie");
        assert_eq!(plan.packages, ["git", "vim"]);
        assert_eq!(plan.kernel_release.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(plan.expect_installed.len(), 2);
    }

    #[test]
    fn a_manifest_refuses_flags_it_overrides_and_registered_images() {
        let dir = tempfile::tempdir().unwrap();
        let err = plan_build(&BuildImage {
            from_manifest: Some(manifest_file(dir.path(), "debian")),
            packages: vec!["curl".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("drop --suite and --packages"),
            "{err}"
        );
        let err = plan_build(&BuildImage {
            from_manifest: Some(manifest_file(dir.path(), "registered")),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("nothing to rebuild it from"),
            "{err}"
        );
    }

    /// An x86_64 executable header with no program headers: no loader, no
    /// shared libraries, so a static agent as far as the check goes.
    fn static_agent(path: &Path) -> PathBuf {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        (h[4], h[5], h[6], h[16], h[18]) = (2, 1, 1, 2, 62);
        std::fs::write(path, h).unwrap();
        path.to_path_buf()
    }

    /// A dynamically linked one, like a plain `cargo build` leaves.
    fn dynamic_agent(path: &Path) -> PathBuf {
        std::fs::copy("/bin/true", path).unwrap();
        path.to_path_buf()
    }

    #[test]
    fn the_agent_search_skips_a_dynamic_candidate_for_a_static_one() {
        let dir = tempfile::tempdir().unwrap();
        let dynamic = dynamic_agent(&dir.path().join("next-to-bangerd"));
        let static_ = static_agent(&dir.path().join("static-build"));
        let missing = dir.path().join("missing");
        let found = first_static_agent([missing, dynamic, static_.clone()]).unwrap();
        assert_eq!(found, static_);
    }

    #[test]
    fn only_dynamic_candidates_say_how_to_build_a_static_agent() {
        let dir = tempfile::tempdir().unwrap();
        let dynamic = dynamic_agent(&dir.path().join("banger-agent"));
        let err = first_static_agent([dynamic]).unwrap_err();
        assert!(matches!(err, Error::AgentBinaryUnusable { .. }), "{err:?}");
        let chain = crate::error::chain(&err);
        assert!(chain.contains("is dynamically linked"), "{chain}");
        assert!(chain.contains("scripts/build"), "{chain}");
        let none = first_static_agent([dir.path().join("missing")]).unwrap_err();
        assert!(matches!(none, Error::AgentBinaryMissing), "{none:?}");
    }

    #[test]
    fn a_configured_dynamic_agent_is_refused_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let dynamic = dynamic_agent(&dir.path().join("banger-agent"));
        let err = find_agent_bin(Some(&dynamic)).unwrap_err();
        assert!(err.to_string().contains("is dynamically linked"), "{err}");
        let static_ = static_agent(&dir.path().join("static"));
        assert_eq!(find_agent_bin(Some(&static_)).unwrap(), static_);
    }

    /// The images service over a temp state dir and a `:memory:` store.
    fn service(root: &Path) -> Arc<Images> {
        let paths = Paths {
            config_file: root.join("config.toml"),
            state_dir: root.join("state"),
            runtime_dir: root.join("run"),
            cache_dir: root.join("cache"),
        };
        let store = Arc::new(Store::open_in_memory().unwrap());
        let ops = Arc::new(Operations::new(store.clone()));
        let runner = Arc::new(crate::testing::FakeRunner::default());
        Arc::new(Images::new(paths, None, store, runner, ops))
    }

    fn op(images: &Images, name: &str) -> Arc<Op> {
        images.ops.begin(OperationKind::ImageBuild, name)
    }

    /// A builder that writes one file and counts its runs.
    fn builder(runs: Arc<std::sync::atomic::AtomicUsize>) -> impl Builder {
        move |out: PathBuf, _: &mut dyn FnMut(BuildEvent)| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::fs::create_dir_all(&out).unwrap();
            std::fs::write(out.join("rootfs.ext4"), "root").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            Ok(serde_json::from_value(serde_json::json!({
                "format": 1, "name": "dev", "source": "minimal", "kernel_version": null,
                "files": [], "created_at": 1, "agent_version": "sha256:00"
            }))
            .unwrap())
        }
    }

    fn runs() -> Arc<std::sync::atomic::AtomicUsize> {
        Arc::new(Default::default())
    }

    /// What is under the images dir.
    fn entries(images: &Images) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(images.images_dir())
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    async fn install(images: &Images, name: &str, force: bool) -> Result<(), Error> {
        let hint = "pass --force to rebuild it";
        images
            .install_exclusive(&op(images, name), name, force, hint, builder(runs()))
            .await
    }

    #[tokio::test]
    async fn an_install_that_died_before_its_row_blocks_no_name() {
        let root = tempfile::tempdir().unwrap();
        let images = service(root.path());
        let dir = images.images_dir();
        // A crash after the rename (step 3), one during a build (step 1)
        // and one while removing a deleted image's files.
        for d in ["dev", ".dev.new-0badf00d", ".old.trash-0badf00d"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
            std::fs::write(dir.join(d).join("rootfs.ext4"), "gigabytes").unwrap();
        }
        images.reconcile();
        assert!(entries(&images).is_empty(), "{:?}", entries(&images));
        install(&images, "dev", false).await.unwrap();
        assert_eq!(images.list().unwrap().len(), 1);
        assert_eq!(entries(&images), ["dev"]);
    }

    #[tokio::test]
    async fn an_install_over_a_directory_without_a_row_replaces_it() {
        let root = tempfile::tempdir().unwrap();
        let images = service(root.path());
        let dir = images.images_dir().join("dev");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stale"), "").unwrap();
        install(&images, "dev", false).await.unwrap();
        assert_eq!(entries(&images), ["dev"]);
        assert!(!dir.join("stale").exists() && dir.join("rootfs.ext4").exists());
    }

    #[tokio::test]
    async fn a_delete_that_died_after_its_row_leaves_nothing_after_reconcile() {
        let root = tempfile::tempdir().unwrap();
        let images = service(root.path());
        install(&images, "dev", false).await.unwrap();
        // The crash: the row is gone (step 1), the files are not.
        assert!(images.store.delete_image("dev").unwrap());
        images.reconcile();
        assert!(entries(&images).is_empty(), "{:?}", entries(&images));
        install(&images, "dev", false).await.unwrap();
        images.delete("dev").unwrap();
        assert!(entries(&images).is_empty(), "delete leaves no trash");
        assert!(matches!(
            images.delete("dev"),
            Err(Error::ImageNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_row_whose_directory_is_gone_is_forgotten() {
        let root = tempfile::tempdir().unwrap();
        let images = service(root.path());
        install(&images, "dev", false).await.unwrap();
        std::fs::remove_dir_all(images.images_dir().join("dev")).unwrap();
        images.reconcile();
        assert!(matches!(
            images.show("dev"),
            Err(Error::ImageNotFound { .. })
        ));
        install(&images, "dev", false).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_build_leaves_no_staging_dir() {
        let root = tempfile::tempdir().unwrap();
        let images = service(root.path());
        let failing = |out: PathBuf, _: &mut dyn FnMut(BuildEvent)| {
            std::fs::create_dir_all(&out).unwrap();
            std::fs::write(out.join("rootfs.ext4"), "half").unwrap();
            Err(banger_image::ImageError::InvalidName {
                name: "dev".into(),
                reason: "injected".into(),
            })
        };
        let err = images
            .install_exclusive(&op(&images, "dev"), "dev", false, "", failing)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(entries(&images).is_empty(), "{:?}", entries(&images));
    }

    #[tokio::test]
    async fn concurrent_builds_of_one_name_build_once_and_leak_nothing() {
        let root = tempfile::tempdir().unwrap();
        let images = service(root.path());
        let count = runs();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (images, count) = (images.clone(), count.clone());
                tokio::spawn(async move {
                    let op = op(&images, "dev");
                    let hint = "pass --force to rebuild it";
                    images
                        .install_exclusive(&op, "dev", false, hint, builder(count))
                        .await
                })
            })
            .collect();
        let mut refused = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => {}
                Err(Error::ImageExists { .. }) => refused += 1,
                Err(e) => panic!("{}", crate::error::chain(&e)),
            }
        }
        assert_eq!(refused, 3, "one build wins, the others are refused");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(entries(&images), ["dev"], "no staging dir is left");
    }

    #[tokio::test]
    async fn a_forced_rebuild_replaces_the_image_and_leaves_no_trash() {
        let root = tempfile::tempdir().unwrap();
        let images = service(root.path());
        install(&images, "dev", false).await.unwrap();
        std::fs::write(images.images_dir().join("dev/old"), "").unwrap();
        install(&images, "dev", true).await.unwrap();
        assert_eq!(entries(&images), ["dev"]);
        assert!(!images.images_dir().join("dev/old").exists());
        assert_eq!(images.list().unwrap().len(), 1);
    }
}
