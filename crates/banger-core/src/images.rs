//! Images as the daemon manages them: build a preset or register user files
//! (both through `banger_image`, as operations with stages), list, show,
//! delete. An image is a directory under `<state>/images/<name>` plus a row.

use crate::error::Error;
use crate::manager::Manager;
use crate::ops::Op;
use crate::store::ImageRecord;
use banger_api::{BuildImage, Image, OperationKind, RegisterImage};
use banger_image::{BuildEvent, Manifest};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Presets `image build` knows.
pub const PRESETS: &[&str] = &["debian", "minimal"];

fn check_preset(preset: &str) -> Result<(), Error> {
    if PRESETS.contains(&preset) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "unknown preset {preset:?}: known presets are {}",
        PRESETS.join(", ")
    )))
}

/// A build request resolved: the preset and its inputs, from the flags or
/// read back from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BuildPlan {
    name: String,
    /// Replace an image of that name.
    force: bool,
    preset: String,
    suite: String,
    packages: Vec<String>,
    kernel_release: Option<String>,
    expect_installed: std::collections::BTreeMap<String, String>,
}

/// Checks `req` and works out what to build; reads the manifest it names.
pub(crate) fn plan_build(req: &BuildImage) -> Result<BuildPlan, Error> {
    let Some(path) = &req.from_manifest else {
        check_preset(&req.preset)?;
        let plan = BuildPlan {
            name: req.name.clone().unwrap_or_else(|| req.preset.clone()),
            force: req.force,
            preset: req.preset.clone(),
            suite: req
                .suite
                .clone()
                .unwrap_or_else(|| banger_image::DebianOptions::default().suite),
            packages: req.packages.clone(),
            kernel_release: None,
            expect_installed: Default::default(),
        };
        if plan.preset != "debian" && (!plan.packages.is_empty() || req.suite.is_some()) {
            return Err(Error::Invalid(format!(
                "--packages and --suite are for the debian preset, not {}",
                plan.preset
            )));
        }
        // Bad package names and suites fail now, not a minute into a build.
        banger_image::debian_package_set(&banger_image::DebianOptions {
            suite: plan.suite.clone(),
            extra_packages: plan.packages.clone(),
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        return Ok(plan);
    };
    if !req.packages.is_empty() || req.suite.is_some() {
        return Err(Error::Invalid(
            "--from-manifest takes the suite and packages from the manifest: drop --suite and --packages"
                .into(),
        ));
    }
    let invalid = |e: banger_image::ManifestError| Error::Invalid(e.to_string());
    let manifest = Manifest::load_given(Path::new(path)).map_err(invalid)?;
    let recipe = manifest.recipe().map_err(invalid)?;
    Ok(BuildPlan {
        name: req.name.clone().unwrap_or(manifest.name),
        force: req.force,
        suite: recipe
            .suite
            .unwrap_or_else(|| banger_image::DebianOptions::default().suite),
        preset: recipe.preset,
        packages: recipe.packages,
        kernel_release: recipe.kernel_release,
        expect_installed: recipe.expect_installed,
    })
}

impl Manager {
    pub fn images(&self) -> Result<Vec<Image>, Error> {
        Ok(self.store.images()?.into_iter().map(image_view).collect())
    }

    pub fn image(&self, name: &str) -> Result<Image, Error> {
        Ok(image_view(self.image_record(name)?))
    }

    pub fn delete_image(&self, name: &str) -> Result<(), Error> {
        let rec = self.image_record(name)?;
        self.store.delete_image(name)?;
        std::fs::remove_dir_all(&rec.dir)
            .or_else(ignore_missing)
            .map_err(Error::io(format!("cannot remove {}", rec.dir)))?;
        Ok(())
    }

    /// The guest agent binary baked into images.
    pub fn agent_bin(&self) -> Result<PathBuf, Error> {
        find_agent_bin(self.config.agent_bin.as_deref()).ok_or_else(|| {
            Error::failed(
                "cannot find the banger-agent binary: set agent_bin in config.toml or BANGER_AGENT_BIN, \
                 or install it next to bangerd (the README's setup command builds it)",
            )
        })
    }

    pub fn build_image(self: &Arc<Self>, req: BuildImage) -> Result<Arc<Op>, Error> {
        let plan = plan_build(&req)?;
        let name = plan.name.clone();
        banger_api::validate_image_name(&name).map_err(Error::Invalid)?;
        if !plan.force && self.store.image(&name)?.is_some() {
            return Err(Error::Conflict(format!(
                "image {name:?} already exists: pass --force to rebuild it"
            )));
        }
        let agent_bin = self.agent_bin()?;
        let op = self.ops.begin(OperationKind::ImageBuild, &name);
        let (this, op2) = (self.clone(), op.clone());
        tokio::spawn(async move {
            let result = this.run_build(&op2, plan, agent_bin).await;
            op2.finish(&this.store, result.map_err(|e| e.to_api()));
        });
        Ok(op)
    }

    /// Builds what `plan` says inside operation `op`.
    pub(crate) async fn run_build(
        &self,
        op: &Arc<Op>,
        plan: BuildPlan,
        agent_bin: PathBuf,
    ) -> Result<(), Error> {
        let (name, force) = (plan.name.clone(), plan.force);
        let params = banger_image::BuildParams {
            name: name.clone(),
            cache_dir: self.paths.cache_dir.clone(),
            agent_bin,
            out_dir: PathBuf::new(),
            runner: self.runner.clone(),
            kernel_release: plan.kernel_release,
            expect_installed: plan.expect_installed,
        };
        let build = move |out_dir: PathBuf, report: &mut dyn FnMut(BuildEvent)| {
            let params = banger_image::BuildParams { out_dir, ..params };
            match plan.preset.as_str() {
                "debian" => {
                    let opts = banger_image::DebianOptions {
                        suite: plan.suite,
                        extra_packages: plan.packages,
                    };
                    banger_image::build_debian(&params, &opts, report)
                }
                _ => banger_image::build_minimal(&params, report),
            }
        };
        self.install_image(op, &name, force, build).await
    }

    pub fn register_image(self: &Arc<Self>, req: RegisterImage) -> Result<Arc<Op>, Error> {
        banger_api::validate_image_name(&req.name).map_err(Error::Invalid)?;
        if self.store.image(&req.name)?.is_some() {
            return Err(Error::Conflict(format!(
                "image {:?} already exists: delete it first or pick another name",
                req.name
            )));
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
                return Err(Error::Invalid(format!(
                    "{what} {p}: no such file (give an absolute path that exists)"
                )));
            }
        }
        let agent_bin = self.agent_bin()?;
        let name = req.name.clone();
        let op = self.ops.begin(OperationKind::ImageRegister, &name);
        let (this, op2) = (self.clone(), op.clone());
        tokio::spawn(async move {
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
            let result = this.install_image(&op2, &name, false, build).await;
            op2.finish(&this.store, result.map_err(|e| e.to_api()));
        });
        Ok(op)
    }

    /// Runs a blocking image builder into a fresh directory and records it;
    /// replaces an existing image of that name only when `force`.
    async fn install_image<F>(
        &self,
        op: &Arc<Op>,
        name: &str,
        force: bool,
        build: F,
    ) -> Result<(), Error>
    where
        F: FnOnce(
                PathBuf,
                &mut dyn FnMut(BuildEvent),
            ) -> Result<Manifest, banger_image::ImageError>
            + Send
            + 'static,
    {
        std::fs::create_dir_all(self.images_dir())
            .map_err(Error::io("cannot create the images dir"))?;
        let final_dir = self.images_dir().join(name);
        let staging = self
            .images_dir()
            .join(format!(".{name}.new-{:08x}", rand::random::<u32>()));
        let out_dir = staging.clone();
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
        .map_err(|e| Error::failed(format!("image build task panicked: {e}")))?;
        let manifest = match manifest {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(Error::failed(crate::error::chain(&e)));
            }
        };
        let record = ImageRecord {
            name: name.to_string(),
            source: manifest.source.clone(),
            kernel_version: manifest.kernel_version.clone(),
            dir: final_dir.to_string_lossy().into_owned(),
            created_at: manifest.created_at,
            manifest: serde_json::to_string(&manifest).expect("manifest serializes"),
        };
        if force
            && self.store.image(name)?.is_some()
            && let Err(e) = self.delete_image(name)
        {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        std::fs::rename(&staging, &final_dir).map_err(Error::io(format!(
            "cannot move the image into {}",
            final_dir.display()
        )))?;
        if let Err(e) = self.store.insert_image(&record) {
            let _ = std::fs::remove_dir_all(&final_dir);
            return Err(e.into());
        }
        Ok(())
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
pub fn find_agent_bin(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_owned());
    }
    if let Some(p) = std::env::var_os("BANGER_AGENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let candidates = [
        dir.join("banger-agent"),
        dir.join("../x86_64-unknown-linux-gnu/release/banger-agent"),
        dir.join("../../x86_64-unknown-linux-gnu/release/banger-agent"),
        PathBuf::from("/usr/local/lib/banger/banger-agent"),
    ];
    candidates.into_iter().find(|p| p.is_file())
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
        assert_eq!(plan.preset, "debian");
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
}
