//! `manifest.json`: what an image directory holds and how to check it is
//! intact. Owns the manifest's format, the file fingerprints (sha256 and
//! size) and their verification for `banger doctor`; not the image records in
//! the daemon's store.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use banger_api::ImageFile;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layout;

/// Bumped on incompatible changes to the manifest's shape.
pub const MANIFEST_FORMAT: u32 = 1;
pub const SOURCE_MINIMAL: &str = "minimal";
pub const SOURCE_DEBIAN: &str = "debian";
pub const SOURCE_REGISTERED: &str = "registered";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "could not read image manifest {path}: the image is incomplete; delete it and build or register it again"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the manifest {path}: give an image's manifest.json or its directory")]
    ReadGiven {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image manifest {path} is corrupt: delete the image and build or register it again")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "image manifest {path} has format {format}, newer than this banger understands: upgrade banger"
    )]
    UnsupportedFormat { path: PathBuf, format: u32 },
    #[error(
        "image {name} was {source_kind}, not built from a preset: there is nothing to rebuild it from"
    )]
    NotBuilt { name: String, source_kind: String },
    #[error("could not write image manifest {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not fingerprint {path}")]
    Hash {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The inputs that made an image, read back from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// `minimal` or `debian`.
    pub preset: String,
    pub suite: Option<String>,
    pub packages: Vec<String>,
    /// The kernel release to take again.
    pub kernel_release: Option<String>,
    /// The installed packages to compare the rebuild with.
    pub expect_installed: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    /// [`SOURCE_MINIMAL`], [`SOURCE_DEBIAN`] or [`SOURCE_REGISTERED`].
    pub source: String,
    /// The kernel release (`uname -r`), when known.
    pub kernel_version: Option<String>,
    /// Arguments this image needs on the kernel command line (may be empty).
    #[serde(default)]
    pub kernel_cmdline: String,
    /// Module file names in the initramfs, in load order.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Every file of the image but the manifest, with its fingerprint.
    pub files: Vec<ImageFile>,
    /// Unix seconds.
    pub created_at: i64,
    /// `sha256:<hex>` of the agent binary baked into `initrd.img`; compare
    /// with the installed agent's to know when an image is stale.
    pub agent_version: String,
    /// The Debian suite the root filesystem was installed from (`bookworm`),
    /// for images made by a distribution's installer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    /// The packages asked for on top of the suite's base (dependencies
    /// come along), sorted; empty when the image lists none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// The kernel's Debian package, `name=version` as apt pins it, for
    /// images made from Debian's kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_package: Option<String>,
    /// Every package installed in the root filesystem and its version, for
    /// images made by a distribution's installer: what a rebuild from this
    /// manifest is compared with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub installed: BTreeMap<String, String>,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(layout::MANIFEST);
        let text = fs::read(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        Manifest::parse(path, &text)
    }

    /// A manifest a user points at: a `manifest.json`, or an image
    /// directory holding one (say, a copy of an image built elsewhere).
    pub fn load_given(path: &Path) -> Result<Manifest, ManifestError> {
        let path = match path.is_dir() {
            true => path.join(layout::MANIFEST),
            false => path.to_path_buf(),
        };
        let text = fs::read(&path).map_err(|source| ManifestError::ReadGiven {
            path: path.clone(),
            source,
        })?;
        Manifest::parse(path, &text)
    }

    fn parse(path: PathBuf, text: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            serde_json::from_slice(text).map_err(|source| ManifestError::Parse {
                path: path.clone(),
                source,
            })?;
        if manifest.format > MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat {
                path,
                format: manifest.format,
            });
        }
        Ok(manifest)
    }

    /// What a build needs to make again the image this manifest describes.
    pub fn recipe(&self) -> Result<Recipe, ManifestError> {
        let preset = match self.source.as_str() {
            SOURCE_MINIMAL | SOURCE_DEBIAN => self.source.clone(),
            other => {
                return Err(ManifestError::NotBuilt {
                    name: self.name.clone(),
                    source_kind: other.to_string(),
                });
            }
        };
        Ok(Recipe {
            preset,
            suite: self.suite.clone(),
            packages: self.packages.clone(),
            kernel_release: self.kernel_version.clone(),
            expect_installed: self.installed.clone(),
        })
    }

    /// Writes `manifest.json` into `dir` (through a temporary file and a
    /// rename, so a reader never sees half a manifest).
    pub fn save(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(layout::MANIFEST);
        let tmp = dir.join(format!(".{}.tmp", layout::MANIFEST));
        let mut json = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        json.push(b'\n');
        fs::write(&tmp, json)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|source| ManifestError::Write { path, source })
    }

    /// The kernel's file name: [`layout::VMLINUX`] or [`layout::BZIMAGE`].
    pub fn kernel_file(&self) -> Option<&str> {
        [layout::VMLINUX, layout::BZIMAGE]
            .into_iter()
            .find(|k| self.files.iter().any(|f| f.name == *k))
    }

    pub fn file(&self, name: &str) -> Option<&ImageFile> {
        self.files.iter().find(|f| f.name == name)
    }

    pub fn size_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The daemon API's view of this image, kept in `dir`.
    pub fn to_api(&self, dir: &Path) -> banger_api::Image {
        banger_api::Image {
            name: self.name.clone(),
            source: self.source.clone(),
            kernel_version: self.kernel_version.clone(),
            created_at: self.created_at,
            dir: dir.display().to_string(),
            files: self.files.clone(),
            size_bytes: self.size_bytes(),
            suite: self.suite.clone(),
            packages: self.packages.clone(),
            kernel_package: self.kernel_package.clone(),
            installed_packages: self.installed.len(),
            warm: None,
        }
    }
}

/// Fingerprints the files `names` in `dir`.
pub fn fingerprint(dir: &Path, names: &[&str]) -> Result<Vec<ImageFile>, ManifestError> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let (sha256, size) =
                hash_file(&path).map_err(|source| ManifestError::Hash { path, source })?;
            Ok(ImageFile {
                name: name.to_string(),
                sha256,
                size,
            })
        })
        .collect()
}

/// Hex sha256 and size of a file, streamed.
pub fn hash_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// `sha256:<hex>` of the agent binary's bytes.
pub fn agent_version(agent: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(agent)))
}

/// The outcome of re-checking one file against the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileCheck {
    pub name: String,
    #[serde(flatten)]
    pub status: FileStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum FileStatus {
    Ok,
    Mismatch {
        expected_sha256: String,
        actual_sha256: String,
        expected_size: u64,
        actual_size: u64,
    },
    Missing,
    Unreadable {
        error: String,
    },
}

impl FileCheck {
    pub fn is_ok(&self) -> bool {
        self.status == FileStatus::Ok
    }
}

impl std::fmt::Display for FileCheck {
    /// `vmlinux: ok`, `rootfs.ext4: missing`, `initrd.img: changed since it was built (…)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.status {
            FileStatus::Ok => write!(f, "{}: ok", self.name),
            FileStatus::Missing => write!(f, "{}: missing", self.name),
            FileStatus::Unreadable { error } => write!(f, "{}: unreadable ({error})", self.name),
            FileStatus::Mismatch {
                expected_sha256,
                actual_sha256,
                expected_size,
                actual_size,
            } => write!(
                f,
                "{}: changed since it was built (sha256 {:.12} instead of {:.12}, {actual_size} bytes instead of {expected_size})",
                self.name, actual_sha256, expected_sha256
            ),
        }
    }
}

/// Re-hashes every file the manifest in `dir` lists.
pub fn verify(dir: &Path) -> Result<Vec<FileCheck>, ManifestError> {
    let manifest = Manifest::load(dir)?;
    let checks = manifest
        .files
        .iter()
        .map(|f| {
            let status = match hash_file(&dir.join(&f.name)) {
                Ok((sha, size)) if sha == f.sha256 && size == f.size => FileStatus::Ok,
                Ok((sha, size)) => FileStatus::Mismatch {
                    expected_sha256: f.sha256.clone(),
                    actual_sha256: sha,
                    expected_size: f.size,
                    actual_size: size,
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => FileStatus::Missing,
                Err(e) => FileStatus::Unreadable {
                    error: e.to_string(),
                },
            };
            FileCheck {
                name: f.name.clone(),
                status,
            }
        })
        .collect();
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_dir() -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("vmlinux"), b"kernel").unwrap();
        fs::write(dir.path().join("rootfs.ext4"), b"root").unwrap();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: "minimal".into(),
            source: SOURCE_MINIMAL.into(),
            kernel_version: Some("6.1.0-56-cloud-amd64".into()),
            kernel_cmdline: String::new(),
            modules: vec!["virtio_ring.ko".into(), "virtio.ko".into()],
            files: fingerprint(dir.path(), &["vmlinux", "rootfs.ext4"]).unwrap(),
            created_at: 1_700_000_000,
            agent_version: agent_version(b"agent"),
            suite: None,
            packages: Vec::new(),
            kernel_package: Some("linux-image-6.1.0-56-cloud-amd64=6.1.192-2".into()),
            installed: [("busybox-static".to_string(), "1:1.35.0-4".to_string())].into(),
        };
        manifest.save(dir.path()).unwrap();
        (dir, manifest)
    }

    #[test]
    fn a_built_images_manifest_gives_back_its_recipe() {
        let (dir, manifest) = image_dir();
        let loaded = Manifest::load_given(&dir.path().join(layout::MANIFEST)).unwrap();
        assert_eq!(Manifest::load_given(dir.path()).unwrap(), loaded);
        let recipe = loaded.recipe().unwrap();
        assert_eq!(recipe.preset, "minimal");
        assert_eq!(recipe.kernel_release, manifest.kernel_version);
        assert_eq!(recipe.expect_installed, manifest.installed);
    }

    #[test]
    fn registered_images_have_no_recipe_and_missing_files_say_what_to_give() {
        let (_dir, mut manifest) = image_dir();
        manifest.source = SOURCE_REGISTERED.into();
        assert_eq!(
            manifest.recipe().unwrap_err().to_string(),
            "image minimal was registered, not built from a preset: there is nothing to rebuild it from"
        );
        let err = Manifest::load_given(Path::new("/nonexistent/manifest.json")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read the manifest /nonexistent/manifest.json: give an image's manifest.json or its directory"
        );
    }

    #[test]
    fn manifest_round_trips_through_its_file() {
        let (dir, manifest) = image_dir();
        assert_eq!(Manifest::load(dir.path()).unwrap(), manifest);
        assert_eq!(manifest.kernel_file(), Some("vmlinux"));
        assert_eq!(manifest.size_bytes(), 10);
        assert_eq!(
            manifest.file("vmlinux").unwrap().sha256,
            hex::encode(Sha256::digest(b"kernel"))
        );
        assert_eq!(manifest.to_api(dir.path()).size_bytes, 10);
    }

    #[test]
    fn debian_fields_round_trip_and_older_manifests_load_without_them() {
        let (dir, manifest) = image_dir();
        let text = fs::read_to_string(dir.path().join("manifest.json")).unwrap();
        assert!(
            !text.contains("\"suite\"") && !text.contains("\"packages\""),
            "{text}"
        );
        assert_eq!(Manifest::load(dir.path()).unwrap().suite, None);

        let debian = Manifest {
            source: SOURCE_DEBIAN.into(),
            suite: Some("bookworm".into()),
            packages: vec!["git".into(), "openssh-server".into()],
            ..manifest
        };
        debian.save(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), debian);
    }

    #[test]
    fn verify_reports_changed_and_missing_files() {
        let (dir, _) = image_dir();
        assert!(verify(dir.path()).unwrap().iter().all(FileCheck::is_ok));
        fs::write(dir.path().join("vmlinux"), b"kernEl").unwrap();
        fs::remove_file(dir.path().join("rootfs.ext4")).unwrap();
        let checks = verify(dir.path()).unwrap();
        assert!(
            matches!(
                &checks[0].status,
                FileStatus::Mismatch {
                    expected_size: 6,
                    actual_size: 6,
                    ..
                }
            ),
            "{checks:?}"
        );
        assert_eq!(checks[1].status, FileStatus::Missing);
        assert_eq!(checks[1].to_string(), "rootfs.ext4: missing");
        assert!(
            checks[0]
                .to_string()
                .starts_with("vmlinux: changed since it was built (sha256 "),
            "{}",
            checks[0]
        );
    }

    #[test]
    fn corrupt_or_future_manifest_says_what_to_do() {
        let (dir, manifest) = image_dir();
        let future = Manifest {
            format: MANIFEST_FORMAT + 1,
            ..manifest
        };
        future.save(dir.path()).unwrap();
        assert!(
            Manifest::load(dir.path())
                .unwrap_err()
                .to_string()
                .ends_with("upgrade banger")
        );
        fs::write(dir.path().join("manifest.json"), b"{").unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("is corrupt: delete the image"),
            "{err}"
        );
    }

    #[test]
    fn file_check_serializes_with_a_status_tag() {
        let check = FileCheck {
            name: "vmlinux".into(),
            status: FileStatus::Missing,
        };
        assert_eq!(
            serde_json::to_string(&check).unwrap(),
            r#"{"name":"vmlinux","status":"missing"}"#
        );
    }
}
