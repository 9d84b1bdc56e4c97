//! What a workspace copies from a host checkout, worked out on the host
//! with git and written as one archive (`banger_proto::archive`) for the
//! agent to unpack:
//!
//! - `tracked`: the files git tracks plus untracked ones it does not
//!   ignore, as they are on disk (uncommitted edits included), and the
//!   repository itself as `.git` (its index too, so `git status` in the
//!   guest shows exactly the host's changes);
//! - `full_copy`: the whole tree, ignored files and submodules included,
//!   minus an explicit exclude list;
//! - with a ref: the files of that commit (`git archive`), `.git` with
//!   `HEAD` detached at it and an index made for it (`git read-tree`).
//!
//! A linked worktree's `.git` is a file: its repository's common dir is
//! copied, with the worktree's own `HEAD` and index. Names are bytes.

use crate::error::Error;
use banger_api::WorkspaceMode;
use banger_proto::archive::Encoder;
use banger_sys::command::{Cmd, Runner};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A checkout inspected: where it is and what HEAD the guest will have.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub top: PathBuf,
    /// The repository's own directory (`.git`, or a worktree's gitdir).
    pub git_dir: PathBuf,
    /// The directory holding objects and refs (differs for a worktree).
    pub common_dir: PathBuf,
    /// The commit the guest's HEAD will be at, when there is one.
    pub head: Option<String>,
}

fn git(runner: &dyn Runner, dir: &Path, args: &[&str]) -> Result<Vec<u8>, Error> {
    let cmd = Cmd::new("git").arg("-C").arg(dir).args(args);
    runner
        .run(&cmd)
        .map(|o| o.stdout)
        .map_err(|source| Error::Git {
            dir: dir.to_owned(),
            source,
        })
}

fn git_line(runner: &dyn Runner, dir: &Path, args: &[&str]) -> Result<String, Error> {
    Ok(String::from_utf8_lossy(&git(runner, dir, args)?)
        .trim()
        .to_string())
}

/// Inspects the checkout around `path`; `git_ref` picks the commit.
pub fn inspect(runner: &dyn Runner, path: &Path, git_ref: Option<&str>) -> Result<Checkout, Error> {
    if !path.is_absolute() {
        return Err(Error::invalid(
            "--from",
            format!("{} is not an absolute path", path.display()),
        ));
    }
    if !path.is_dir() {
        return Err(Error::invalid(
            "--from",
            format!("{} is not a directory", path.display()),
        ));
    }
    let top = git_line(runner, path, &["rev-parse", "--show-toplevel"]).map_err(|_| {
        Error::invalid(
            "--from",
            format!("{} is not inside a git checkout", path.display()),
        )
    })?;
    let top = PathBuf::from(top);
    let git_dir = PathBuf::from(git_line(
        runner,
        &top,
        &["rev-parse", "--absolute-git-dir"],
    )?);
    let common = git_line(
        runner,
        &top,
        &["rev-parse", "--path-format=absolute", "--git-common-dir"],
    )?;
    let head = match git_ref {
        Some(r) => Some(
            git_line(
                runner,
                &top,
                &[
                    "rev-parse",
                    "--verify",
                    "--end-of-options",
                    &format!("{r}^{{commit}}"),
                ],
            )
            .map_err(|_| {
                Error::invalid(
                    "--ref",
                    format!("{r:?} is not a commit in {}", top.display()),
                )
            })?,
        ),
        // An unborn branch has no HEAD commit yet.
        None => git_line(runner, &top, &["rev-parse", "--verify", "--quiet", "HEAD"])
            .ok()
            .filter(|s| !s.is_empty()),
    };
    Ok(Checkout {
        top,
        git_dir,
        common_dir: PathBuf::from(common),
        head,
    })
}

/// Progress of writing a workspace archive.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub files: u64,
    pub bytes: u64,
}

/// Writes the archive of `co` in `mode` to `out` (blocking); `progress`
/// sees running totals.
pub fn write_archive(
    runner: &dyn Runner,
    co: &Checkout,
    req: &banger_api::PrepareWorkspace,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(Written),
) -> Result<Written, Error> {
    let (mode, git_ref, exclude, depth) = (
        req.mode,
        req.git_ref.as_deref(),
        req.exclude.as_slice(),
        req.depth,
    );
    let shallow = match (depth, &co.head) {
        (Some(n), Some(head)) => Some(shallow_objects(runner, co, head, n)?),
        _ => None,
    };
    let mut w = Writer {
        enc: Encoder::new(out),
        done: Written::default(),
        progress,
        shallow: shallow.as_ref().map(|d| d.path().to_path_buf()),
    };
    let root_mode = std::fs::metadata(&co.top)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o755);
    w.dir(b"", root_mode)?;
    match (mode, git_ref) {
        (WorkspaceMode::FullCopy, _) => {
            w.tree(&co.top, &mut Vec::new(), exclude)?;
        }
        (WorkspaceMode::Tracked, None) => {
            let list = git(
                runner,
                &co.top,
                &[
                    "ls-files",
                    "-z",
                    "--cached",
                    "--others",
                    "--exclude-standard",
                ],
            )?;
            w.listed(&co.top, &list)?;
            w.repository(co, None)?;
        }
        (WorkspaceMode::Tracked, Some(_)) => {
            let commit = co.head.as_deref().expect("a ref resolves to a commit");
            let tar = git(runner, &co.top, &["archive", "--format=tar", commit])?;
            w.tar_entries(&tar)?;
            let index = tempfile::NamedTempFile::new()
                .map_err(Error::io("cannot make a temporary index"))?;
            let cmd = Cmd::new("git")
                .arg("-C")
                .arg(&co.top)
                .args(["read-tree", commit])
                .env("GIT_INDEX_FILE", index.path());
            runner.run(&cmd).map_err(|source| Error::Git {
                dir: co.top.clone(),
                source,
            })?;
            w.repository(co, Some((commit, index.path())))?;
        }
    }
    let done = w.done;
    w.enc.end().map_err(archive_err)?;
    Ok(done)
}

fn archive_err(e: banger_proto::archive::ArchiveError) -> Error {
    Error::Io {
        context: "cannot write the workspace archive".into(),
        source: std::io::Error::other(e),
    }
}

struct Writer<'a> {
    enc: Encoder<&'a mut dyn Write>,
    done: Written,
    progress: &'a mut dyn FnMut(Written),
    /// A bare repository holding only the last commits (`--depth`): its
    /// objects and `shallow` file stand in for the checkout's.
    shallow: Option<PathBuf>,
}

/// The last `depth` commits up to `head`, fetched into a temporary bare
/// repository (git's own shallow fetch: the checkout is not touched).
fn shallow_objects(
    runner: &dyn Runner,
    co: &Checkout,
    head: &str,
    depth: u32,
) -> Result<tempfile::TempDir, Error> {
    let tmp = tempfile::tempdir().map_err(Error::io("cannot make a temporary repository"))?;
    let git_err = |source| Error::Git {
        dir: co.top.clone(),
        source,
    };
    runner
        .run(
            &Cmd::new("git")
                .args(["init", "-q", "--bare"])
                .arg(tmp.path()),
        )
        .map_err(git_err)?;
    let url = format!("file://{}", co.top.display());
    runner
        .run(
            &Cmd::new("git")
                .arg("-C")
                .arg(tmp.path())
                .args(["fetch", "-q", "--no-tags", &format!("--depth={depth}")])
                .args([
                    "--upload-pack",
                    "git -c uploadpack.allowAnySHA1InWant=true upload-pack",
                ])
                .arg(&url)
                .arg(head),
        )
        .map_err(git_err)?;
    Ok(tmp)
}

impl Writer<'_> {
    /// A directory made for the copy (not one copied from disk): dated
    /// now, as a fresh clone's are, not 1970.
    fn dir(&mut self, path: &[u8], mode: u32) -> Result<(), Error> {
        let now = banger_sys::clock::unix_now();
        self.enc.dir(path, mode & 0o7777, now).map_err(archive_err)
    }

    fn bytes(&mut self, path: &[u8], mode: u32, content: &[u8]) -> Result<(), Error> {
        self.enc
            .file(path, mode & 0o7777, 0, content.len() as u64)
            .map_err(archive_err)?;
        self.enc.data(content).map_err(archive_err)?;
        self.count(content.len() as u64);
        Ok(())
    }

    fn count(&mut self, bytes: u64) {
        self.done.files += 1;
        self.done.bytes += bytes;
        if self.done.files.is_multiple_of(256) {
            (self.progress)(self.done);
        }
    }

    /// One file, symlink or directory from disk at archive path `path`.
    fn entry(&mut self, disk: &Path, path: &[u8]) -> Result<bool, Error> {
        let meta = match std::fs::symlink_metadata(disk) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(format!("cannot read {}", disk.display()))(e)),
        };
        let ft = meta.file_type();
        let mtime = meta.mtime();
        if ft.is_symlink() {
            let target = std::fs::read_link(disk)
                .map_err(Error::io(format!("cannot read {}", disk.display())))?;
            self.enc
                .symlink(path, mtime, target.as_os_str().as_bytes())
                .map_err(archive_err)?;
            self.count(0);
        } else if ft.is_dir() {
            self.enc
                .dir(path, meta.mode() & 0o7777, mtime)
                .map_err(archive_err)?;
        } else if ft.is_file() {
            let mut f = std::fs::File::open(disk)
                .map_err(Error::io(format!("cannot read {}", disk.display())))?;
            let size = meta.len();
            self.enc
                .file(path, meta.mode() & 0o7777, mtime, size)
                .map_err(archive_err)?;
            let mut buf = vec![0u8; 256 << 10];
            let mut left = size;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = f
                    .read(&mut buf[..want])
                    .map_err(Error::io(format!("cannot read {}", disk.display())))?;
                if n == 0 {
                    return Err(Error::Io {
                        context: format!("{} shrank while it was copied", disk.display()),
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                self.enc.data(&buf[..n]).map_err(archive_err)?;
                left -= n as u64;
            }
            self.count(size);
        }
        // Sockets, devices, FIFOs: nothing to copy.
        Ok(true)
    }

    /// A whole directory tree below `base`/`rel`, skipping `exclude`d names.
    fn tree(&mut self, base: &Path, rel: &mut Vec<u8>, exclude: &[String]) -> Result<(), Error> {
        let dir = base.join(std::ffi::OsStr::from_bytes(rel));
        let mut names: Vec<OsString> = std::fs::read_dir(&dir)
            .map_err(Error::io(format!("cannot read {}", dir.display())))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(Error::io(format!("cannot read {}", dir.display())))?;
        names.sort();
        for name in names {
            let len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            if !excluded(rel, exclude) {
                let disk = base.join(std::ffi::OsStr::from_bytes(rel));
                self.entry(&disk, rel)?;
                if std::fs::symlink_metadata(&disk).is_ok_and(|m| m.is_dir()) {
                    self.tree(base, rel, exclude)?;
                }
            }
            rel.truncate(len);
        }
        Ok(())
    }

    /// The NUL-separated paths git listed, with the directories they need.
    fn listed(&mut self, top: &Path, list: &[u8]) -> Result<(), Error> {
        let mut paths: Vec<&[u8]> = list.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
        paths.sort();
        paths.dedup();
        let mut made: std::collections::HashSet<Vec<u8>> = Default::default();
        for p in paths {
            for (i, b) in p.iter().enumerate() {
                if *b == b'/' && made.insert(p[..i].to_vec()) {
                    let disk = top.join(std::ffi::OsStr::from_bytes(&p[..i]));
                    let mode = std::fs::metadata(&disk).map(|m| m.mode()).unwrap_or(0o755);
                    self.dir(&p[..i], mode)?;
                }
            }
            // A gitlink (submodule) is a directory: keep it, empty.
            let disk = top.join(std::ffi::OsStr::from_bytes(p));
            if std::fs::symlink_metadata(&disk).is_ok_and(|m| m.is_dir()) {
                if made.insert(p.to_vec()) {
                    self.entry(&disk, p)?;
                }
                continue;
            }
            self.entry(&disk, p)?;
        }
        Ok(())
    }

    /// The repository as `.git`: the common dir, with this checkout's own
    /// HEAD and index (or a detached commit and an index made for it).
    /// Shallow (`--depth`): the objects and `shallow` file of the shallow
    /// fetch, the checkout's loose objects on top (what is staged but not
    /// committed), and only HEAD's own branch among the refs.
    fn repository(&mut self, co: &Checkout, at: Option<(&str, &Path)>) -> Result<(), Error> {
        self.dir(b".git", 0o755)?;
        let mut rel = b".git".to_vec();
        let own = ["HEAD", "index"];
        let mut skip: Vec<String> = own
            .iter()
            .map(|s| s.to_string())
            .chain(["worktrees".to_string(), "index.lock".to_string()])
            .collect();
        if let Some(shallow) = self.shallow.clone() {
            skip.extend(["objects", "refs", "packed-refs", "shallow", "logs"].map(String::from));
            self.git_tree(&co.common_dir, &mut rel, &skip)?;
            self.entry(&shallow.join("shallow"), b".git/shallow")?;
            self.dir(b".git/objects", 0o755)?;
            let mut objects = b".git/objects".to_vec();
            self.git_tree(&shallow.join("objects"), &mut objects, &[])?;
            self.loose_objects(&co.common_dir.join("objects"), &shallow.join("objects"))?;
            self.branch_ref(co, at.map(|(c, _)| c))?;
        } else {
            self.git_tree(&co.common_dir, &mut rel, &skip)?;
        }
        match at {
            Some((commit, index)) => {
                self.bytes(b".git/HEAD", 0o644, format!("{commit}\n").as_bytes())?;
                self.entry(index, b".git/index")?;
            }
            None => {
                for name in own {
                    self.entry(&co.git_dir.join(name), format!(".git/{name}").as_bytes())?;
                }
            }
        }
        Ok(())
    }

    /// The checkout's loose objects the shallow fetch may lack (those it
    /// has already are not written twice).
    fn loose_objects(&mut self, objects: &Path, have: &Path) -> Result<(), Error> {
        let Ok(rd) = std::fs::read_dir(objects) else {
            return Ok(());
        };
        let mut fans: Vec<OsString> = rd
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.len() == 2 && n.as_bytes().iter().all(u8::is_ascii_hexdigit))
            .collect();
        fans.sort();
        for fan in fans {
            let rel = [b".git/objects/".as_slice(), fan.as_bytes()].concat();
            if !have.join(&fan).is_dir() {
                self.dir(&rel, 0o755)?;
            }
            let mut names: Vec<OsString> = std::fs::read_dir(objects.join(&fan))
                .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            names.sort();
            for name in names {
                if have.join(&fan).join(&name).exists() {
                    continue;
                }
                let path = [rel.as_slice(), b"/", name.as_bytes()].concat();
                self.entry(&objects.join(&fan).join(&name), &path)?;
            }
        }
        Ok(())
    }

    /// `refs/heads/<branch>` at HEAD's commit, when HEAD names a branch.
    fn branch_ref(&mut self, co: &Checkout, detached: Option<&str>) -> Result<(), Error> {
        self.dir(b".git/refs", 0o755)?;
        self.dir(b".git/refs/heads", 0o755)?;
        self.dir(b".git/refs/tags", 0o755)?;
        let (Some(head), None) = (&co.head, detached) else {
            return Ok(());
        };
        let text = std::fs::read_to_string(co.git_dir.join("HEAD")).unwrap_or_default();
        let Some(branch) = text.trim().strip_prefix("ref: refs/heads/") else {
            return Ok(());
        };
        let mut parent = b".git/refs/heads".to_vec();
        let parts: Vec<&str> = branch.split('/').collect();
        for dir in &parts[..parts.len() - 1] {
            parent.extend_from_slice(b"/");
            parent.extend_from_slice(dir.as_bytes());
            self.dir(&parent, 0o755)?;
        }
        let path = format!(".git/refs/heads/{branch}");
        self.bytes(path.as_bytes(), 0o644, format!("{head}\n").as_bytes())
    }

    /// `dir` into archive path `rel`, skipping top-level `skip` names.
    fn git_tree(&mut self, dir: &Path, rel: &mut Vec<u8>, skip: &[String]) -> Result<(), Error> {
        let mut names: Vec<OsString> = std::fs::read_dir(dir)
            .map_err(Error::io(format!("cannot read {}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for name in names {
            if skip.iter().any(|s| s.as_bytes() == name.as_bytes()) {
                continue;
            }
            let len = rel.len();
            rel.push(b'/');
            rel.extend_from_slice(name.as_bytes());
            let disk = dir.join(&name);
            self.entry(&disk, rel)?;
            if std::fs::symlink_metadata(&disk).is_ok_and(|m| m.is_dir()) {
                self.git_tree(&disk, rel, &[])?;
            }
            rel.truncate(len);
        }
        Ok(())
    }

    /// The entries of a `git archive` tar.
    fn tar_entries(&mut self, tar: &[u8]) -> Result<(), Error> {
        let mut archive = tar::Archive::new(tar);
        let bad = |e: std::io::Error| Error::io("cannot read git archive's output")(e);
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let path = entry.path_bytes().into_owned();
            let path: Vec<u8> = path.strip_suffix(b"/").unwrap_or(&path).to_vec();
            if path.is_empty() || path == b"pax_global_header" {
                continue;
            }
            let mode = entry.header().mode().unwrap_or(0o644);
            match entry.header().entry_type() {
                tar::EntryType::Directory => self.dir(&path, mode)?,
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    self.enc.symlink(&path, 0, &target).map_err(archive_err)?;
                    self.count(0);
                }
                tar::EntryType::Regular => {
                    let mut content = Vec::new();
                    entry.read_to_end(&mut content).map_err(bad)?;
                    self.bytes(&path, mode, &content)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Whether `rel` is excluded: an entry without '/' matches any component
/// name; one with '/' matches that path and everything below it.
fn excluded(rel: &[u8], exclude: &[String]) -> bool {
    exclude.iter().any(|e| {
        let e = e.trim_end_matches('/').as_bytes();
        if e.contains(&b'/') {
            rel == e || (rel.starts_with(e) && rel.get(e.len()) == Some(&b'/'))
        } else {
            rel.split(|b| *b == b'/').any(|c| c == e)
        }
    })
}

/// Checks an exclude list from a request.
pub fn check_excludes(exclude: &[String]) -> Result<(), Error> {
    for e in exclude {
        if e.is_empty() || e.starts_with('/') || e.split('/').any(|c| c == "..") {
            return Err(Error::invalid(
                "--exclude",
                format!("{e:?} must be a relative path or a name, without '..'"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_match_names_anywhere_and_paths_from_the_top() {
        let ex = vec!["target".to_string(), "docs/build".to_string()];
        assert!(excluded(b"target", &ex));
        assert!(excluded(b"crates/x/target", &ex));
        assert!(excluded(b"docs/build/x.html", &ex));
        assert!(!excluded(b"docs/buildx", &ex));
        assert!(!excluded(b"targets", &ex));
        assert!(check_excludes(&["../x".into()]).is_err());
        assert!(check_excludes(&["/abs".into()]).is_err());
    }
}
