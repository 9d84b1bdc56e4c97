//! Images as the daemon manages them: build a preset or register user files
//! (both through `banger_image`, as operations with stages), list, show,
//! delete. An image is a directory under `<state>/images/<name>` plus a row.

use crate::error::Error;
use crate::manager::Manager;
use crate::ops::Op;
use crate::store::ImageRecord;
use banger_api::{BuildImage, Image, ImageFile, OperationKind, RegisterImage};
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
        check_preset(&req.preset)?;
        let name = req.name.clone().unwrap_or_else(|| req.preset.clone());
        banger_api::validate_image_name(&name).map_err(Error::Invalid)?;
        if !req.force && self.store.image(&name)?.is_some() {
            return Err(Error::Conflict(format!(
                "image {name:?} already exists: pass --force to rebuild it"
            )));
        }
        let agent_bin = self.agent_bin()?;
        let op = self.ops.begin(OperationKind::ImageBuild, &name);
        let (this, op2) = (self.clone(), op.clone());
        tokio::spawn(async move {
            let result = this.run_build(&op2, &name, &req, agent_bin).await;
            op2.finish(&this.store, result.map_err(|e| e.to_api()));
        });
        Ok(op)
    }

    /// Builds preset `req.preset` as image `name` inside operation `op`.
    pub(crate) async fn run_build(
        &self,
        op: &Arc<Op>,
        name: &str,
        req: &BuildImage,
        agent_bin: PathBuf,
    ) -> Result<(), Error> {
        let params = banger_image::BuildParams {
            name: name.to_string(),
            cache_dir: self.paths.cache_dir.clone(),
            agent_bin,
            out_dir: PathBuf::new(),
            runner: self.runner.clone(),
        };
        let (preset, packages) = (req.preset.clone(), req.packages.clone());
        let build = move |out_dir: PathBuf, report: &mut dyn FnMut(BuildEvent)| {
            let params = banger_image::BuildParams { out_dir, ..params };
            match preset.as_str() {
                "debian" => {
                    let opts = banger_image::DebianOptions {
                        suite: "bookworm".into(),
                        extra_packages: packages,
                    };
                    banger_image::build_debian(&params, &opts, report)
                }
                _ => banger_image::build_minimal(&params, report),
            }
        };
        self.install_image(op, name, req.force, build).await
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
    let files: Vec<ImageFile> = serde_json::from_str::<Manifest>(&rec.manifest)
        .map(|m| m.files)
        .unwrap_or_default();
    Image {
        size_bytes: files.iter().map(|f| f.size).sum(),
        name: rec.name,
        source: rec.source,
        kernel_version: rec.kernel_version,
        created_at: rec.created_at,
        dir: rec.dir,
        files,
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
