//! The guest's initramfs (`initrd.img`): an uncompressed newc archive with
//! the agent as `/init`, the kernel modules it loads before it can see any
//! disk, and the mount points it needs. Owns what goes into the archive; the
//! byte format is [`crate::cpio`].
//!
//! For a registered image with its own initrd, ours is appended after the
//! user's (padded with NULs to 4 bytes, which the kernel skips): the kernel
//! unpacks concatenated archives in order, compressed or not, and a later
//! file replaces an earlier one, so our `/init` wins while the user's
//! firmware, modules or tools stay available to the agent.
//!
//! Archive contents, all owned by 0:0 with mtime 0:
//!
//! | path | what |
//! |---|---|
//! | `/init` | the agent binary, 0755 |
//! | `/dev/console` | char device 5:1: the kernel opens it for `/init`'s stdio before anything mounts devtmpfs |
//! | `/lib/modules/banger/*.ko` | the modules, see [`crate::modules`] |
//! | `/etc/banger/modules` | their file names in load order, one per line, with the virtio devices each drives and its dependencies ([`banger_proto::modules`]) |
//! | `/dev /proc /sys /tmp /newroot` | mount points |

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cpio::CpioWriter;
use crate::elf::Elf;
use crate::layout;
use crate::modules::Module;

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("could not read the agent binary {path}: build banger-agent or fix the agent path")]
    AgentRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "agent binary {path} is not an ELF executable: point the agent path at the built banger-agent"
    )]
    AgentNotElf { path: PathBuf },
    #[error(
        "agent binary {path} is dynamically linked (it needs {needs}); build it static: RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p banger-agent --target x86_64-unknown-linux-gnu, or run scripts/build"
    )]
    AgentDynamic { path: PathBuf, needs: String },
    #[error("could not read kernel module {path}")]
    ModuleRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not assemble the initramfs archive")]
    Assemble {
        #[source]
        source: io::Error,
    },
    #[error("could not read initrd {path}")]
    UserInitrdRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not write the initramfs {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The agent binary, read and checked: an ELF that needs no loader and no
/// shared library.
#[derive(Debug, Clone)]
pub struct Agent {
    pub bytes: Vec<u8>,
}

/// Reads and checks the agent binary. A dynamically linked one is refused:
/// the guest runs it as PID 1 from the initramfs, where there is no loader
/// and no libc, so every boot would end in "Attempted to kill init". A
/// static-pie is fine (a dynamic segment for its own relocations, no
/// `PT_INTERP`, no `DT_NEEDED`).
pub fn read_agent(path: &Path) -> Result<Agent, InitramfsError> {
    let bytes = fs::read(path).map_err(|source| InitramfsError::AgentRead {
        path: path.to_path_buf(),
        source,
    })?;
    let elf = Elf::parse(&bytes).ok_or_else(|| InitramfsError::AgentNotElf {
        path: path.to_path_buf(),
    })?;
    let needs = match elf.interp() {
        Some(loader) => Some(loader),
        None if elf.has_interp() => Some("a dynamic loader".to_string()),
        None => Some(elf.needed().join(", ")).filter(|n| !n.is_empty()),
    };
    if let Some(needs) = needs {
        return Err(InitramfsError::AgentDynamic {
            path: path.to_path_buf(),
            needs,
        });
    }
    Ok(Agent { bytes })
}

/// Whether `path` is an agent binary images can take (see [`read_agent`]).
pub fn check_agent(path: &Path) -> Result<(), InitramfsError> {
    read_agent(path).map(drop)
}

/// Builds our archive: the agent as `/init` plus `modules` in load order.
pub fn agent_archive(agent: &Agent, modules: &[Module]) -> Result<Vec<u8>, InitramfsError> {
    let mut module_bytes = Vec::with_capacity(modules.len());
    for m in modules {
        let bytes = fs::read(&m.path).map_err(|source| InitramfsError::ModuleRead {
            path: m.path.clone(),
            source,
        })?;
        module_bytes.push(bytes);
    }
    // Writing into memory fails only on an entry the format cannot hold
    // (a file over 4 GiB).
    let assemble_err = |source| InitramfsError::Assemble { source };
    let mut w = CpioWriter::new(Vec::with_capacity(
        agent.bytes.len() + module_bytes.iter().map(Vec::len).sum::<usize>(),
    ));
    let build = |w: &mut CpioWriter<Vec<u8>>| -> io::Result<()> {
        for (dir, perm) in [
            ("dev", 0o755),
            ("proc", 0o555),
            ("sys", 0o555),
            ("tmp", 0o1777),
            ("newroot", 0o755),
        ] {
            w.dir(dir, perm)?;
        }
        w.char_dev("dev/console", 0o600, 5, 1)?;
        for dir in [
            "etc",
            "etc/banger",
            "lib",
            "lib/modules",
            "lib/modules/banger",
        ] {
            w.dir(dir, 0o755)?;
        }
        let mut list = String::new();
        for (m, bytes) in modules.iter().zip(&module_bytes) {
            w.file(
                &format!("{}/{}", layout::INITRD_MODULE_DIR, m.file_name),
                0o644,
                bytes,
            )?;
            list.push_str(&banger_proto::modules::module_line(&m.file_name, &m.info));
            list.push('\n');
        }
        w.file(layout::INITRD_MODULE_LIST, 0o644, list.as_bytes())?;
        w.file("init", 0o755, &agent.bytes)
    };
    build(&mut w).map_err(assemble_err)?;
    w.finish().map_err(assemble_err)
}

/// Writes `dest`: the user's initrd (if any, NUL-padded to 4 bytes) followed
/// by `ours`. Returns the size written.
pub fn write(dest: &Path, user_initrd: Option<&Path>, ours: &[u8]) -> Result<u64, InitramfsError> {
    let mut out = match user_initrd {
        Some(p) => fs::read(p).map_err(|source| InitramfsError::UserInitrdRead {
            path: p.to_path_buf(),
            source,
        })?,
        None => Vec::new(),
    };
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(ours);
    fs::write(dest, &out).map_err(|source| InitramfsError::Write {
        path: dest.to_path_buf(),
        source,
    })?;
    Ok(out.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::tests::parse;
    use crate::modules::tests::fake_ko;

    fn agent() -> Agent {
        Agent {
            bytes: b"\x7fELF agent".to_vec(),
        }
    }

    fn modules(dir: &Path) -> Vec<Module> {
        ["virtio_ring.ko", "virtio.ko"]
            .iter()
            .map(|f| {
                let path = dir.join(f);
                fs::write(&path, fake_ko(&[&format!("name={f}")])).unwrap();
                Module {
                    name: f.trim_end_matches(".ko").into(),
                    file_name: f.to_string(),
                    path,
                    info: banger_proto::modules::ModuleInfo {
                        virtio_ids: if f == &"virtio.ko" {
                            vec![Some(2)]
                        } else {
                            vec![]
                        },
                        depends: if f == &"virtio.ko" {
                            vec!["virtio_ring".into()]
                        } else {
                            vec![]
                        },
                    },
                }
            })
            .collect()
    }

    #[test]
    fn archive_has_agent_as_init_modules_in_order_and_console() {
        let dir = tempfile::tempdir().unwrap();
        let archive = agent_archive(&agent(), &modules(dir.path())).unwrap();
        let (entries, rest) = parse(&archive);
        assert!(rest.is_empty());
        let find = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(
            (find("init").mode, find("init").data.as_slice()),
            (0o100755, &b"\x7fELF agent"[..])
        );
        assert_eq!(
            (find("dev/console").mode, find("dev/console").rdev),
            (0o020600, (5, 1))
        );
        assert_eq!(
            String::from_utf8_lossy(&find("etc/banger/modules").data),
            "virtio_ring.ko virtio= depends=\nvirtio.ko virtio=00000002 depends=virtio_ring\n"
        );
        assert!(
            find("lib/modules/banger/virtio.ko")
                .data
                .starts_with(b"\x7fELF")
        );
        for d in ["dev", "proc", "sys", "tmp", "newroot"] {
            assert_eq!(find(d).mode & 0o170000, 0o040000, "{d} is not a directory");
        }
        let pos = |n: &str| entries.iter().position(|e| e.name == n).unwrap();
        assert!(
            pos("lib/modules/banger") < pos("lib/modules/banger/virtio.ko"),
            "parent must come first"
        );
    }

    #[test]
    fn user_initrd_comes_first_padded_to_four_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.img");
        fs::write(&user, b"\x1f\x8b\x08gzi").unwrap();
        let ours = agent_archive(&agent(), &[]).unwrap();
        let dest = dir.path().join("initrd.img");
        let size = write(&dest, Some(&user), &ours).unwrap();
        let bytes = fs::read(&dest).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(&bytes[..8], b"\x1f\x8b\x08gzi\0\0");
        assert_eq!(&bytes[8..], ours.as_slice());
    }

    fn write_agent(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = dir.join("banger-agent");
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_dynamically_linked_agent_is_refused_saying_how_to_build_it() {
        // /bin/true is dynamically linked on every host that runs the tests.
        let dir = tempfile::tempdir().unwrap();
        let path = write_agent(dir.path(), &fs::read("/bin/true").unwrap());
        let err = read_agent(&path).unwrap_err().to_string();
        assert!(
            err.contains("is dynamically linked (it needs /lib"),
            "{err}"
        );
        assert!(err.contains("target-feature=+crt-static"), "{err}");
        assert!(err.contains("scripts/build"), "{err}");
    }

    #[test]
    fn an_agent_needing_shared_libraries_without_a_loader_is_refused() {
        use crate::elf::testing::build;
        let mut dynamic = Vec::new();
        for (tag, val) in [(1u64, 1u64), (5, 0), (0, 0)] {
            dynamic.extend(tag.to_le_bytes());
            dynamic.extend(val.to_le_bytes());
        }
        let elf = build(&[(2, dynamic), (1, b"\0libc.so.6\0".to_vec())], &[]);
        let dir = tempfile::tempdir().unwrap();
        let err = read_agent(&write_agent(dir.path(), &elf)).unwrap_err();
        assert!(err.to_string().contains("(it needs libc.so.6)"), "{err}");
    }

    #[test]
    fn a_static_or_static_pie_agent_is_taken() {
        use crate::elf::testing::build;
        let dir = tempfile::tempdir().unwrap();
        // A static-pie keeps a dynamic segment for its own relocations.
        let mut relocations = Vec::new();
        for (tag, val) in [(7u64, 0x328u64), (8, 24), (0, 0)] {
            relocations.extend(tag.to_le_bytes());
            relocations.extend(val.to_le_bytes());
        }
        for elf in [build(&[], &[]), build(&[(2, relocations)], &[])] {
            check_agent(&write_agent(dir.path(), &elf)).unwrap();
        }
        // The agent scripts/build makes, when it is there.
        let built = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/x86_64-unknown-linux-gnu/release/banger-agent");
        if built.is_file() {
            check_agent(&built).unwrap();
        }
    }

    #[test]
    fn agent_must_be_an_elf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sh");
        fs::write(&path, "#!/bin/sh\n").unwrap();
        let err = read_agent(&path).unwrap_err();
        assert!(
            err.to_string().contains("is not an ELF executable"),
            "{err}"
        );
    }
}
