//! Snapshot and restore on QEMU (7.2 and later), through QMP.
//!
//! A booted guest's RAM is a shared memfd ([`boot_memory`]), so the device
//! state need not carry it: with the `x-ignore-shared` migration
//! capability a shared RAM block is left out of the stream, and the
//! snapshot copies the memfd itself (through `/proc/<pid>/fd`).
//!
//! Snapshot ([`snapshot`]), on the control socket:
//! 1. `qom-get` whether the RAM is shared (and a file backend's path), `query-block`
//!    the drives' top layers;
//! 2. `stop` (QEMU drains and flushes every disk);
//! 3. each drive in the switch list: `blockdev-add` its new overlay (made
//!    beforehand, empty, by [`create_layer`]) and `blockdev-snapshot` onto
//!    it: the layer below is frozen from now on;
//! 4. `migrate-set-capabilities` `x-ignore-shared`, `getfd` (the state
//!    file, opened here), `migrate` to `fd:`, poll `query-migrate`;
//! 5. the RAM copied out sparse (a privately mapped one went through the
//!    stream instead);
//! 6. `cont`, unless the VM is to stop. A migrated source that is not
//!    continued refuses a second migration; one that is, takes it.
//!
//! Restore ([`restore`]): the VM's command line with its RAM from the
//! snapshot (in place: a copy in a memfd mapped shared, so it can be
//! snapshotted again cheaply; a fork: the snapshot's file mapped privately,
//! pages shared by every VM restored from it) and `-incoming defer`; then
//! `x-ignore-shared` (set before `migrate-incoming`: 7.2 has no command-line
//! switch for it), `getfd`, `migrate-incoming` from `fd:`, poll
//! `query-migrate`, `cont` (the source was paused, so the target is too).

use super::qmp::{Qmp, control};
use super::{QemuEngine, control_socket};
use crate::engine::snapshot::{RAM_FILE, STATE_FILE};
use crate::engine::{EngineError, Handles, Layer, MachineSpec, RamMapping, SnapshotReport, Switch};
use banger_sys::command::{Cmd, Runner};
use serde_json::{Value, json};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// A booting VM's RAM: a shared memfd. Shared, so a snapshot leaves it
/// out of the device state and copies it itself; a memfd, so it is memory
/// like any guest's (never written back to a disk, never taking the state
/// dir's space, where a full disk would fault the guest) and goes with the
/// process, whatever kills it.
pub fn boot_memory(spec: &MachineSpec) -> String {
    format!(
        "memory-backend-memfd,id=mem,size={}M,share=on",
        spec.memory_mib
    )
}

/// The memfd a VM restored in place runs on: a copy of the snapshot's RAM
/// the daemon made, which QEMU maps shared.
const RESTORED_RAM: &str = "banger-ram";

/// Where the RAM of the engine `pid` can be read: the memfd it holds
/// (`/proc/<pid>/fd/<n>`, readable by its own user), booted (QEMU names
/// it after the backend) or restored in place ([`RESTORED_RAM`]), else its
/// backend's file.
fn ram_source(pid: u32, mem_path: Option<&str>) -> Result<PathBuf, EngineError> {
    let fds = PathBuf::from(format!("/proc/{pid}/fd"));
    let ours = format!("/memfd:{RESTORED_RAM} ");
    for entry in std::fs::read_dir(&fds)?.flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        if target.starts_with("/memfd:memory-backend-memfd") || target.starts_with(&ours) {
            return Ok(entry.path());
        }
    }
    mem_path.map(PathBuf::from).ok_or_else(|| {
        control(
            "find guest ram",
            "the engine holds no memfd and names no file",
        )
    })
}

/// The guest RAM's backing file as QEMU arguments (`-machine
/// memory-backend=mem` names it).
pub fn memory_object(spec: &MachineSpec, path: &Path, share: bool) -> String {
    format!(
        "memory-backend-file,id=mem,size={}M,mem-path={},share={}",
        spec.memory_mib,
        super::option_value(path),
        if share { "on" } else { "off" }
    )
}

/// How many empty layers interrupted snapshots may have left on a drive.
const MAX_LATE_LAYERS: usize = 64;

/// How long a migration to or from a file may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);

/// What a snapshot and a restore ask of a QMP session besides commands.
impl Qmp {
    /// `getfd`: QEMU keeps `file` under `name` for a `fd:NAME` URI.
    async fn pass_file(&mut self, name: &str, file: &File) -> Result<(), EngineError> {
        let msg = Qmp::message("getfd", json!({ "fdname": name }));
        let sock = self.w.as_ref();
        loop {
            sock.writable().await?;
            match sock.try_io(tokio::io::Interest::WRITABLE, || {
                banger_sys::fdpass::send_with_fd(sock, &msg, file)
            }) {
                Ok(n) if n == msg.len() => break,
                Ok(n) => {
                    self.w.write_all(&msg[n..]).await?;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.reply("getfd").await.map(drop)
    }

    /// Waits for the migration in either direction to complete.
    async fn wait_migration(&mut self) -> Result<(), EngineError> {
        let deadline = Instant::now() + MIGRATE_TIMEOUT;
        loop {
            let st = self.execute("query-migrate", Value::Null).await?;
            match st.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => return Ok(()),
                s @ ("failed" | "cancelled") => {
                    let why = st.get("error-desc").and_then(Value::as_str).unwrap_or(s);
                    return Err(control("migrate", why));
                }
                _ if Instant::now() > deadline => {
                    return Err(control("migrate", "did not complete in time"));
                }
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    async fn ignore_shared(&mut self) -> Result<(), EngineError> {
        self.execute(
            "migrate-set-capabilities",
            json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] }),
        )
        .await
        .map(drop)
    }
}

fn bad(dir: &Path, problem: impl Into<String>) -> EngineError {
    EngineError::BadSnapshot {
        dir: dir.to_owned(),
        problem: problem.into(),
    }
}

/// `overlay`: an empty qcow2 over `base`, written here ([`super::qcow2`]):
/// a snapshot makes one per drive while its guest is paused. `base` may be
/// open in a running QEMU: only its size is read, without a lock.
pub fn create_layer(base: &Layer, overlay: &Path) -> Result<(), EngineError> {
    super::qcow2::virtual_size(&base.path, base.format)
        .and_then(|size| super::qcow2::write_overlay(overlay, &base.path, base.format, size))
        .map_err(|source| EngineError::Overlay {
            path: overlay.to_owned(),
            source,
        })
}

/// Makes `layer` (a qcow2 no VM has open) name `base` as what it is over;
/// its contents are unchanged (`qemu-img rebase -u`).
pub fn rebase_layer(runner: &dyn Runner, layer: &Layer, base: &Layer) -> Result<(), EngineError> {
    let formats = ["-f", layer.format.as_str(), "-F", base.format.as_str()];
    let cmd = Cmd::new("qemu-img")
        .args(["rebase", "-q", "-u"])
        .args(formats)
        .arg("-b")
        .arg(&base.path)
        .arg(&layer.path);
    qemu_img(runner, &cmd, &layer.path)
}

/// Runs `cmd` (a `qemu-img` writing the disk `path`) to its end.
fn qemu_img(runner: &dyn Runner, cmd: &Cmd, path: &Path) -> Result<(), EngineError> {
    runner
        .run(cmd)
        .map(drop)
        .map_err(|source| EngineError::RootDisk {
            path: path.to_owned(),
            source,
        })
}

/// `dest`: what `top` shows, over `base` (only the differences) or alone;
/// sparse. The source may be a running VM's backing file (read with `-U`).
pub fn copy_layer(
    runner: &dyn Runner,
    top: &Layer,
    base: Option<&Layer>,
    dest: &Layer,
) -> Result<(), EngineError> {
    let mut cmd = Cmd::new("qemu-img").args([
        "convert",
        "-U",
        "-f",
        top.format.as_str(),
        "-O",
        dest.format.as_str(),
    ]);
    if let Some(b) = base {
        cmd = cmd.arg("-B").arg(&b.path).args(["-F", b.format.as_str()]);
    }
    qemu_img(runner, &cmd.arg(&top.path).arg(&dest.path), &dest.path)
}

/// The file a qcow2 layer is over, as its header names it.
fn backing_of(runner: &dyn Runner, layer: &Path) -> Option<PathBuf> {
    let out = runner
        .run(
            &Cmd::new("qemu-img")
                .args(["info", "-U", "--output=json", "-f", "qcow2"])
                .arg(layer),
        )
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get("full-backing-filename")
        .or_else(|| v.get("backing-filename"))
        .and_then(Value::as_str)
        .map(|name| lexical(Path::new(name)))
}

/// `path` with its `.` and `..` components resolved by name (a relative
/// backing name resolves to `dir/layers/../work.ext4`; QEMU names the
/// drives by their plain paths).
fn lexical(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A drive's top layer's file, from the name `query-block` gives it: a
/// path, or, for a layer whose recorded base name differs from the name
/// QEMU opened that base by (a layer naming its base relatively, put by
/// `blockdev-snapshot` over a node QEMU opened by absolute path: banger
/// names bases absolutely, so that no such name grows with the chain),
/// `json:{…}` with the layer's own file under `file.filename`.
fn top_file(name: &str) -> Option<PathBuf> {
    match name.strip_prefix("json:") {
        None => Some(lexical(Path::new(name))),
        Some(json) => {
            let v: Value = serde_json::from_str(json).ok()?;
            let file = v.get("file")?;
            let name = file
                .get("filename")
                .or_else(|| file.get("file")?.get("filename"))?;
            Some(lexical(Path::new(name.as_str()?)))
        }
    }
}

/// The drives' top layers: file → node name.
async fn top_layers(q: &mut Qmp) -> Result<Vec<(PathBuf, String)>, EngineError> {
    let blocks = q.execute("query-block", Value::Null).await?;
    Ok(blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            let ins = b.get("inserted")?;
            Some((
                top_file(ins.get("file")?.as_str()?)?,
                ins.get("node-name")?.as_str()?.to_string(),
            ))
        })
        .collect())
}

async fn qom_get(q: &mut Qmp, property: &str) -> Result<Value, EngineError> {
    q.execute(
        "qom-get",
        json!({ "path": "/objects/mem", "property": property }),
    )
    .await
}

pub(super) async fn snapshot(
    engine: &QemuEngine,
    handles: &Handles,
    dir: &Path,
    switch: &[Switch],
    resume: bool,
) -> Result<SnapshotReport, EngineError> {
    let mut q = Qmp::connect(&handles.control_socket).await?;
    // A file backend names its file; a memfd backend has no such property.
    let mem_path = qom_get(&mut q, "mem-path").await.ok();
    let ram = ram_source(handles.pid, mem_path.as_ref().and_then(Value::as_str))?;
    let shared = qom_get(&mut q, "share").await?.as_bool().unwrap_or(false);
    let tops = top_layers(&mut q).await?;
    // Node names are unique for the engine's life; the layers a snapshot
    // leaves stay nodes (backing) of the chain. At most 31 characters.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let mut moves: Vec<(String, String, PathBuf)> = Vec::new();
    for (i, s) in switch.iter().enumerate() {
        let on_top = |file: &Path| {
            tops.iter()
                .find(|(f, _)| f == file)
                .map(|(_, node)| node.clone())
        };
        let name = format!("l{stamp:x}-{i}");
        if let Some(node) = on_top(&s.current) {
            moves.push((node, name, s.overlay.clone()));
            continue;
        }
        // Snapshots interrupted between recording a new top and moving the
        // engine onto it leave `current` over one or more empty layers over
        // the engine's top: stack them first, bottom up, then the new one.
        let mut pending = vec![s.current.as_path().to_owned()];
        let mut below = None;
        while below.is_none() && pending.len() <= MAX_LATE_LAYERS {
            let Some(b) = backing_of(&*engine.runner, pending.last().expect("one")) else {
                break;
            };
            match on_top(&b) {
                Some(node) => below = Some(node),
                None => pending.push(b),
            }
        }
        let Some(mut node) = below else {
            return Err(control(
                "query-block",
                format!("no drive has {} on top", s.current.display()),
            ));
        };
        for (j, layer) in pending.into_iter().rev().enumerate() {
            let late = format!("{name}-{j}");
            moves.push((node, late.clone(), layer));
            node = late;
        }
        moves.push((node, name, s.overlay.clone()));
    }
    let state = File::options()
        .write(true)
        .create_new(true)
        .open(dir.join(STATE_FILE))?;
    let t0 = Instant::now();
    q.execute("stop", Value::Null).await?;
    let paused = async {
        for (node, name, overlay) in &moves {
            q.execute(
                "blockdev-add",
                json!({
                    "driver": "qcow2",
                    "node-name": name,
                    "file": { "driver": "file", "filename": overlay },
                    "backing": null,
                }),
            )
            .await?;
            q.execute(
                "blockdev-snapshot",
                json!({ "node": node, "overlay": name }),
            )
            .await?;
        }
        q.ignore_shared().await?;
        q.pass_file("snapshot", &state).await?;
        q.execute("migrate", json!({ "uri": "fd:snapshot" }))
            .await?;
        q.wait_migration().await?;
        if shared {
            let runner = engine.runner.clone();
            let (from, to) = (ram.clone(), dir.join(RAM_FILE));
            tokio::task::spawn_blocking(move || crate::disks::sparse_copy(&*runner, &from, &to))
                .await
                .map_err(|e| control("copy guest ram", e))?
                .map_err(|e| control("copy guest ram", crate::error::chain(&e)))?;
        }
        Ok::<_, EngineError>(())
    }
    .await;
    // Whatever happened, a VM that is to run on runs on, and so does one
    // whose snapshot failed (it was to stop only with a snapshot taken).
    if resume || paused.is_err() {
        let cont = q.execute("cont", Value::Null).await;
        paused?;
        cont?;
    }
    Ok(SnapshotReport {
        paused_ms: t0.elapsed().as_millis() as u64,
    })
}

/// After a daemon was killed mid-snapshot: `stop` leaves the guest
/// `paused`, a finished migration `postmigrate`. Nothing else in banger
/// pauses a guest so (a disk error is `io-error`), so either is resumed.
pub(super) async fn resume_interrupted(handles: &Handles) -> Result<bool, EngineError> {
    let mut q = Qmp::connect(&handles.control_socket).await?;
    let status = q.execute("query-status", Value::Null).await?;
    match status.get("status").and_then(Value::as_str) {
        Some("paused" | "postmigrate") => {
            q.execute("cont", Value::Null).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub(super) async fn restore(
    engine: &QemuEngine,
    spec: &MachineSpec,
    from: &Path,
    mapping: RamMapping,
) -> Result<Handles, EngineError> {
    let state =
        File::open(from.join(STATE_FILE)).map_err(|e| bad(from, format!("{STATE_FILE}: {e}")))?;
    let snap_ram = from.join(RAM_FILE);
    // A restore in place runs on a copy of the snapshot's RAM in a memfd
    // mapped shared (QEMU opens it through this process's fd; it is gone
    // with QEMU), so the VM can be snapshotted again cheaply and its forks
    // share pages. A fork maps the snapshot's file privately: pages read on
    // demand and shared with every VM restored from it, the snapshot
    // intact. A snapshot whose RAM went through the device state loads
    // into private memory.
    let mut _held = None;
    let memory = if snap_ram.exists() && mapping == RamMapping::Copy {
        let memfd = banger_sys::fs::memfd(RESTORED_RAM)?;
        let path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            banger_sys::process::own_pid(),
            std::os::fd::AsRawFd::as_raw_fd(&memfd)
        ));
        let (runner, from_ram, to) = (engine.runner.clone(), snap_ram.clone(), path.clone());
        tokio::task::spawn_blocking(move || crate::disks::sparse_copy(&*runner, &from_ram, &to))
            .await
            .map_err(|e| control("copy guest ram", e))?
            .map_err(|e| control("copy guest ram", crate::error::chain(&e)))?;
        _held = Some(memfd);
        memory_object(spec, &path, true)
    } else if snap_ram.exists() {
        memory_object(spec, &snap_ram, false)
    } else {
        format!(
            "memory-backend-memfd,id=mem,size={}M,share=off",
            spec.memory_mib
        )
    };
    let mut args = super::argv_with(spec, &memory);
    args.extend(["-incoming".to_string(), "defer".to_string()]);
    let handles = engine.spawn_inner(spec, args).await?;
    let incoming = async {
        let mut q = Qmp::connect(&control_socket(&spec.run_dir)).await?;
        q.ignore_shared().await?;
        q.pass_file("restore", &state).await?;
        q.execute("migrate-incoming", json!({ "uri": "fd:restore" }))
            .await?;
        q.wait_migration().await?;
        q.execute("cont", Value::Null).await.map(drop)
    };
    match incoming.await {
        Ok(()) => Ok(handles),
        Err(e) => {
            let _ = engine.stop_inner(&handles, Duration::from_secs(1)).await;
            let log = crate::layout::tail(&spec.engine_log, 4);
            Err(if log.is_empty() {
                e
            } else {
                control("restore", format!("{e}; engine said: {log}"))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_layer_is_found_by_its_path_or_in_qemus_json_name() {
        assert_eq!(
            top_file("/s/vms/a/layers/x.qcow2"),
            Some(PathBuf::from("/s/vms/a/layers/x.qcow2"))
        );
        let json = r#"json:{"backing": {"driver": "qcow2", "file": {"driver": "file", "filename": "/s/vms/a/root.qcow2"}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/s/vms/a/layers/x.qcow2"}}"#;
        assert_eq!(
            top_file(json),
            Some(PathBuf::from("/s/vms/a/layers/x.qcow2"))
        );
        assert_eq!(
            lexical(Path::new("/s/vms/a/layers/../work.ext4")),
            PathBuf::from("/s/vms/a/work.ext4")
        );
        assert_eq!(top_file("json:{not json"), None);
    }
}
