//! Choosing the kernel modules the guest needs and the order to load them.
//! Owns the reading of a `/lib/modules/<version>` tree; not where the
//! modules end up (that is [`crate::initramfs`]) nor loading them (the agent).
//!
//! Debian's kernel package ships no `modules.dep` (depmod runs at install
//! time), so dependencies come from the modules themselves:
//!
//! 1. Index every `*.ko` under the tree by name, `-` and `_` being the same
//!    character in module names, and read `modules.builtin` for what the
//!    kernel has built in.
//! 2. For each wanted module, read its `.modinfo` ELF section: NUL-separated
//!    `key=value` strings, among them `depends=a,b` and `vermagic=<release> …`.
//! 3. Visit dependencies depth-first and emit each module after its
//!    dependencies, so loading the list in order never fails on a missing
//!    symbol. Built-in modules are skipped; a cycle is an error.
//!
//! The result for Debian's cloud kernel is `virtio_ring`, `virtio`,
//! `virtio_mmio`, `virtio_blk`, `virtio_console`, then the network and vsock
//! drivers.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use banger_proto::modules::ModuleInfo;

use crate::elf::Elf;

/// Modules without which the guest cannot boot on `-M microvm`: the
/// virtio-mmio transport, the disks and the agent's virtio-serial port.
pub const REQUIRED: &[&str] = &["virtio_mmio", "virtio_blk", "virtio_console"];
/// Modules taken when the tree has them: networking and vsock (the agent
/// channel on Firecracker and on hosts with vhost-vsock).
pub const OPTIONAL: &[&str] = &["virtio_net", "vmw_vsock_virtio_transport"];

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("{path} is not a directory: pass the kernel's /lib/modules/<version> directory")]
    NotADirectory { path: PathBuf },
    #[error("could not read kernel modules under {path}")]
    Scan {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "kernel module {name}, needed by {needed_by}, is neither a .ko file under {root} nor built into \
         the kernel: pass the kernel's complete /lib/modules/<version> tree"
    )]
    Missing {
        name: String,
        needed_by: String,
        root: PathBuf,
    },
    #[error(
        "{path} is compressed, which banger cannot load yet: decompress the modules (xz -d, zstd -d) and try again"
    )]
    Compressed { path: PathBuf },
    #[error("could not read kernel module {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an ELF kernel module (it has no .modinfo section)")]
    NotAModule { path: PathBuf },
    #[error(
        "{path} was built for kernel {module_version}, not {kernel_version}: \
         pass the /lib/modules tree that belongs to this kernel"
    )]
    VersionMismatch {
        path: PathBuf,
        module_version: String,
        kernel_version: String,
    },
    #[error("kernel modules depend on each other in a cycle: {chain}")]
    Cycle { chain: String },
}

/// One module to load, in a resolved order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Canonical name (`_` for `-`).
    pub name: String,
    /// File name as in the tree (`virtio_ring.ko`).
    pub file_name: String,
    pub path: PathBuf,
    /// What decides whether a guest needs it, for the initramfs's list.
    pub info: ModuleInfo,
}

/// What a module's `.modinfo` says about where it fits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub depends: Vec<String>,
    /// The kernel release it was built for (first word of `vermagic=`).
    pub kernel_release: Option<String>,
    /// The virtio device ids it drives (`alias=virtio:d…`); `None` is any.
    pub virtio_ids: Vec<Option<u32>>,
}

/// `-` and `_` are interchangeable in module names; `_` is canonical.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for entry in section.split(|&b| b == 0) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            continue;
        };
        if let Some(deps) = entry.strip_prefix("depends=") {
            info.depends.extend(
                deps.split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(canonical),
            );
        } else if let Some(vermagic) = entry.strip_prefix("vermagic=") {
            info.kernel_release = vermagic.split_whitespace().next().map(str::to_string);
        } else if let Some(id) = entry
            .strip_prefix("alias=")
            .and_then(banger_proto::modules::virtio_alias)
        {
            info.virtio_ids.push(id);
        }
    }
    info
}

/// An index of a `/lib/modules/<version>` tree.
#[derive(Debug)]
pub struct ModuleTree {
    root: PathBuf,
    files: HashMap<String, PathBuf>,
    compressed: HashMap<String, PathBuf>,
    builtin: HashSet<String>,
}

impl ModuleTree {
    pub fn scan(root: &Path) -> Result<ModuleTree, ModuleError> {
        if !root.is_dir() {
            return Err(ModuleError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        let mut tree = ModuleTree {
            root: root.to_path_buf(),
            files: HashMap::new(),
            compressed: HashMap::new(),
            builtin: HashSet::new(),
        };
        tree.walk(root)?;
        match fs::read_to_string(root.join("modules.builtin")) {
            Ok(text) => tree.builtin = text.lines().filter_map(|l| module_name(l, ".ko")).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ModuleError::Scan {
                    path: root.join("modules.builtin"),
                    source,
                });
            }
        }
        Ok(tree)
    }

    fn walk(&mut self, dir: &Path) -> Result<(), ModuleError> {
        let scan_err = |source| ModuleError::Scan {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries: Vec<_> = fs::read_dir(dir)
            .map_err(scan_err)?
            .collect::<Result<_, _>>()
            .map_err(scan_err)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let file_type = entry.file_type().map_err(scan_err)?;
            let Some(file_name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if file_type.is_dir() {
                self.walk(&path)?;
            } else if let Some(name) = module_name(&file_name, ".ko") {
                self.files.entry(name).or_insert(path);
            } else if let Some(name) = [".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .find_map(|ext| module_name(&file_name, ext))
            {
                self.compressed.entry(name).or_insert(path);
            }
        }
        Ok(())
    }

    /// Resolves the [`REQUIRED`] and [`OPTIONAL`] modules.
    pub fn resolve_guest_modules(
        &self,
        kernel_release: Option<&str>,
    ) -> Result<Vec<Module>, ModuleError> {
        self.resolve(REQUIRED, OPTIONAL, kernel_release)
    }

    /// Resolves `required` and, where present, `optional` modules with their
    /// dependencies, dependencies first. When `kernel_release` is known, every
    /// module must have been built for it.
    pub fn resolve(
        &self,
        required: &[&str],
        optional: &[&str],
        kernel_release: Option<&str>,
    ) -> Result<Vec<Module>, ModuleError> {
        let mut walk = Walk {
            tree: self,
            kernel_release,
            done: HashSet::new(),
            path: Vec::new(),
            out: Vec::new(),
        };
        for name in required {
            walk.visit(&canonical(name), "the guest")?;
        }
        for name in optional.iter().map(|n| canonical(n)) {
            if self.files.contains_key(&name) || self.compressed.contains_key(&name) {
                walk.visit(&name, "the guest")?;
            }
        }
        Ok(walk.out)
    }
}

struct Walk<'a> {
    tree: &'a ModuleTree,
    kernel_release: Option<&'a str>,
    done: HashSet<String>,
    /// The chain being visited, to report cycles.
    path: Vec<String>,
    out: Vec<Module>,
}

impl Walk<'_> {
    fn visit(&mut self, name: &str, needed_by: &str) -> Result<(), ModuleError> {
        if self.done.contains(name) {
            return Ok(());
        }
        if self.path.iter().any(|p| p == name) {
            let mut chain = self.path.clone();
            chain.push(name.to_string());
            return Err(ModuleError::Cycle {
                chain: chain.join(" -> "),
            });
        }
        let Some(path) = self.tree.files.get(name) else {
            if self.tree.builtin.contains(name) {
                self.done.insert(name.to_string());
                return Ok(());
            }
            if let Some(path) = self.tree.compressed.get(name) {
                return Err(ModuleError::Compressed { path: path.clone() });
            }
            return Err(ModuleError::Missing {
                name: name.to_string(),
                needed_by: needed_by.to_string(),
                root: self.tree.root.clone(),
            });
        };
        let bytes = fs::read(path).map_err(|source| ModuleError::Read {
            path: path.clone(),
            source,
        })?;
        let section = Elf::parse(&bytes)
            .and_then(|elf| elf.section(".modinfo"))
            .ok_or_else(|| ModuleError::NotAModule { path: path.clone() })?;
        let info = parse_modinfo(section);
        if let (Some(want), Some(have)) = (self.kernel_release, &info.kernel_release)
            && want != have
        {
            return Err(ModuleError::VersionMismatch {
                path: path.clone(),
                module_version: have.clone(),
                kernel_version: want.to_string(),
            });
        }
        self.path.push(name.to_string());
        for dep in &info.depends {
            self.visit(dep, name)?;
        }
        self.path.pop();
        self.done.insert(name.to_string());
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.out.push(Module {
            name: name.to_string(),
            file_name,
            path: path.clone(),
            info: ModuleInfo {
                virtio_ids: info.virtio_ids,
                depends: info.depends,
            },
        });
        Ok(())
    }
}

/// `kernel/drivers/virtio/virtio-ring.ko` → `virtio_ring` (for `ext` = `.ko`).
fn module_name(path: &str, ext: &str) -> Option<String> {
    let file = path.trim().rsplit('/').next()?;
    file.strip_suffix(ext)
        .filter(|s| !s.is_empty())
        .map(canonical)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::elf::testing;

    /// A synthetic `.ko`: an ELF whose `.modinfo` holds `entries`.
    pub fn fake_ko(entries: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for e in entries {
            modinfo.extend_from_slice(e.as_bytes());
            modinfo.push(0);
        }
        testing::build(&[], &[(".text", vec![0xc3; 16]), (".modinfo", modinfo)])
    }

    /// Writes Debian-cloud-like virtio modules (one spelled with a dash)
    /// under `root/kernel/...`.
    pub fn fake_tree(root: &Path, release: &str) {
        let vermagic = format!("vermagic={release} SMP preempt mod_unload modversions ");
        let modules: &[(&str, &str)] = &[
            ("drivers/virtio/virtio_ring.ko", "depends="),
            ("drivers/virtio/virtio.ko", "depends=virtio_ring"),
            (
                "drivers/virtio/virtio_mmio.ko",
                "depends=virtio,virtio_ring",
            ),
            ("drivers/block/virtio_blk.ko", "depends=virtio,virtio-ring"),
            (
                "drivers/char/virtio-console.ko",
                "depends=virtio,virtio_ring",
            ),
            (
                "drivers/net/virtio_net.ko",
                "depends=virtio_ring,virtio,net_failover",
            ),
            ("drivers/net/net_failover.ko", "depends=failover"),
            ("net/core/failover.ko", "depends="),
            ("drivers/scsi/virtio_scsi.ko", "depends=virtio,virtio_ring"),
        ];
        for (rel, depends) in modules {
            let path = root.join("kernel").join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            let name = format!(
                "name={}",
                Path::new(rel).file_stem().unwrap().to_str().unwrap()
            );
            fs::write(
                &path,
                fake_ko(&[
                    "license=GPL",
                    "description=depends=not_a_dep",
                    depends,
                    &name,
                    &vermagic,
                ]),
            )
            .unwrap();
        }
        fs::write(
            root.join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n",
        )
        .unwrap();
    }

    #[test]
    fn modinfo_depends_and_vermagic_are_parsed() {
        let section = b"license=GPL\0depends=virtio,virtio-ring\0vermagic=6.1.0-56-cloud-amd64 SMP mod_unload \0";
        let info = parse_modinfo(section);
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
        assert_eq!(info.kernel_release.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(parse_modinfo(b"depends=\0").depends, Vec::<String>::new());
        let aliases =
            parse_modinfo(b"alias=virtio:d00000001v*\0alias=pci:v1AF4d*\0alias=virtio:d*v*\0");
        assert_eq!(aliases.virtio_ids, [Some(1), None]);
    }

    /// The modules of the kernel banger's images boot, when an image build
    /// has unpacked them into the e2e cache: the ids and dependencies the
    /// agent decides by.
    #[test]
    fn the_debian_cloud_kernels_guest_modules_say_what_they_drive() {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        let extract = target.join("e2e-cache/banger/extract");
        let release = fs::read_dir(&extract)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("linux-image-"))
            .find_map(|e| {
                fs::read_dir(e.path().join("lib/modules"))
                    .ok()?
                    .flatten()
                    .next()
            });
        let Some(release) = release else {
            eprintln!("skipped: no unpacked kernel under {}", extract.display());
            return;
        };
        let tree = ModuleTree::scan(&release.path()).unwrap();
        let modules = tree.resolve_guest_modules(None).unwrap();
        let info = |name: &str| {
            modules
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("no {name}"))
                .info
                .clone()
        };
        assert_eq!(info("virtio_blk").virtio_ids, [Some(2)]);
        assert_eq!(info("virtio_console").virtio_ids, [Some(3)]);
        let net = info("virtio_net");
        assert_eq!(net.virtio_ids, [Some(1)]);
        assert!(net.depends.contains(&"net_failover".to_string()), "{net:?}");
        assert!(info("virtio_ring").virtio_ids.is_empty());
    }

    #[test]
    fn dependencies_come_before_their_users() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path(), "6.1.0-99-cloud-amd64");
        let tree = ModuleTree::scan(dir.path()).unwrap();
        let mods = tree
            .resolve_guest_modules(Some("6.1.0-99-cloud-amd64"))
            .unwrap();
        let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_blk",
                "virtio_console",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        assert_eq!(mods[4].file_name, "virtio-console.ko");
    }

    #[test]
    fn builtin_dependencies_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mod_dir = dir.path().join("kernel");
        fs::create_dir_all(&mod_dir).unwrap();
        fs::write(
            mod_dir.join("virtio_blk.ko"),
            fake_ko(&["depends=virtio,virtio_ring"]),
        )
        .unwrap();
        fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n",
        )
        .unwrap();
        let tree = ModuleTree::scan(dir.path()).unwrap();
        let mods = tree.resolve(&["virtio_blk"], &[], None).unwrap();
        assert_eq!(
            mods.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["virtio_blk"]
        );
    }

    #[test]
    fn missing_dependency_names_who_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("virtio_blk.ko"),
            fake_ko(&["depends=virtio"]),
        )
        .unwrap();
        let err = ModuleTree::scan(dir.path())
            .unwrap()
            .resolve(&["virtio_blk"], &[], None)
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "kernel module virtio, needed by virtio_blk, is neither a .ko file under"
            ),
            "{err}"
        );
    }

    #[test]
    fn cycle_is_reported_with_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.ko"), fake_ko(&["depends=b"])).unwrap();
        fs::write(dir.path().join("b.ko"), fake_ko(&["depends=a"])).unwrap();
        let err = ModuleTree::scan(dir.path())
            .unwrap()
            .resolve(&["a"], &[], None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel modules depend on each other in a cycle: a -> b -> a"
        );
    }

    #[test]
    fn modules_for_another_kernel_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path(), "6.1.0-99-cloud-amd64");
        let err = ModuleTree::scan(dir.path())
            .unwrap()
            .resolve_guest_modules(Some("6.12.0-1-amd64"))
            .unwrap_err();
        assert!(matches!(err, ModuleError::VersionMismatch { .. }), "{err}");
    }

    #[test]
    fn compressed_modules_are_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("virtio_mmio.ko.xz"), b"\xfd7zXZ\0").unwrap();
        let err = ModuleTree::scan(dir.path())
            .unwrap()
            .resolve(&["virtio_mmio"], &[], None)
            .unwrap_err();
        assert!(matches!(err, ModuleError::Compressed { .. }), "{err}");
    }

    #[test]
    fn non_elf_ko_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("virtio_mmio.ko"), b"depends=\0").unwrap();
        let err = ModuleTree::scan(dir.path())
            .unwrap()
            .resolve(&["virtio_mmio"], &[], None)
            .unwrap_err();
        assert!(matches!(err, ModuleError::NotAModule { .. }), "{err}");
    }
}
