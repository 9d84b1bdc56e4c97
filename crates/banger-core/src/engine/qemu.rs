//! The QEMU engine: `qemu-system-x86_64 -M microvm` from the distro.
//!
//! 1. Root disk: a qcow2 overlay over the image's raw, read-only base,
//!    written by [`qcow2`] (no `qemu-img` process: ~1 ms with its
//!    `fdatasync`, not ~10; O(1) in the image's size).
//! 2. Accelerator: KVM when `/dev/kvm` boots a stock kernel, else TCG
//!    ([`super::accel`]), decided once per engine.
//! 3. [`argv`] turns a [`MachineSpec`] into QEMU's command line: virtio-mmio
//!    block devices found by serial, a virtio-serial port named
//!    [`banger_proto::PORT_NAME`] on a unix-socket chardev (the agent
//!    channel), QMP on a second unix socket, the serial console appended to
//!    a file (kept under a cap by `crate::console`). Paths inside option
//!    strings have their commas doubled ([`option_value`]), QEMU's escape.
//! 4. [`QemuEngine::spawn`] starts it in its own process group (so it
//!    outlives a killed daemon), waits until both sockets exist, and reaps
//!    it in the background when it exits; that reaping is what a stop of
//!    an engine this daemon spawned waits for (one it adopted is polled).
//! 5. Stop: QMP `quit` (the daemon first asks the agent for a clean
//!    power-off), then SIGKILL after the timeout; kill: SIGKILL. Both hold
//!    the guest RAM's memfd open across the exit ([`GuestRam`]), so the
//!    exit only unmaps it and the pages are freed after the caller has
//!    seen the engine gone.
//! 6. Disk errors: writable drives pause the guest on a failed write
//!    (`werror=stop`); [`pause`] follows that on a second QMP socket, and
//!    `cont` lets the guest run on.
//!
//! Liveness ([`QemuEngine::alive`]) is what stands between a pid read from a
//! scratch file and a SIGKILL: a process counts as this VM's engine only
//! when it runs the configured QEMU binary, as our uid, with this VM's exact
//! `-qmp` argument.

use super::accel::{self, KvmStatus};
use super::{
    Accel, Drive, DriveFormat, Engine, EngineError, Handles, MachineSpec, Nic, Pause, Sockets,
};
use super::{Layer, RamMapping, SnapshotReport, Switch};
use crate::config::AccelChoice;
use crate::layout::VmDir;
use banger_api::{Check, CheckStatus, EngineKind};
use banger_sys::command::{Cmd, Runner};
use banger_sys::spawn::{SpawnOptions, Spawner};
use futures::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::sync::watch;

/// The root disk's file in the VM's state dir.
pub const ROOT_DISK: &str = "root.qcow2";

pub struct QemuEngine {
    binary: PathBuf,
    accel_choice: AccelChoice,
    /// Where the KVM probe's verdict is cached (shared by isolated instances).
    probe_cache: PathBuf,
    runner: Arc<dyn Runner>,
    spawner: Arc<dyn Spawner>,
    /// The accelerator decision, made once.
    decided: tokio::sync::Mutex<Option<(Accel, KvmStatus)>>,
    /// `binary` found in `PATH` with symlinks resolved, as `/proc/<pid>/exe`
    /// shows it (once found).
    resolved: OnceLock<PathBuf>,
    /// `--version`'s first line (once asked).
    version: OnceLock<String>,
    /// The running engines this daemon spawned, by pid: `true` once reaped
    /// (the reaping task then drops its entry).
    exits: Arc<std::sync::Mutex<Exits>>,
}

impl QemuEngine {
    pub fn new(
        binary: PathBuf,
        accel_choice: AccelChoice,
        cache_dir: &Path,
        runner: Arc<dyn Runner>,
        spawner: Arc<dyn Spawner>,
    ) -> QemuEngine {
        QemuEngine {
            binary,
            accel_choice,
            probe_cache: accel::cache_file(cache_dir),
            runner,
            spawner,
            decided: tokio::sync::Mutex::new(None),
            resolved: OnceLock::new(),
            version: OnceLock::new(),
            exits: Default::default(),
        }
    }

    fn exits_lock(&self) -> std::sync::MutexGuard<'_, Exits> {
        lock_exits(&self.exits)
    }

    /// The configured binary's real path, or `None` while it cannot be found.
    fn binary_path(&self) -> Option<&Path> {
        if let Some(p) = self.resolved.get() {
            return Some(p);
        }
        let found = banger_sys::command::which(&self.binary.to_string_lossy())?;
        let real = std::fs::canonicalize(found).ok()?;
        Some(self.resolved.get_or_init(|| real))
    }
}

type Exits = std::collections::HashMap<u32, watch::Receiver<bool>>;

fn lock_exits(exits: &std::sync::Mutex<Exits>) -> std::sync::MutexGuard<'_, Exits> {
    exits.lock().unwrap_or_else(|e| e.into_inner())
}

/// An engine's guest RAM (its memfds), held open across its exit: the exit
/// then only unmaps it, and the pages (up to the guest's whole memory) are
/// freed when this is dropped, on a blocking thread, after the caller saw
/// the engine gone. That took ~15 of a killed TCG VM's ~25 ms to exit.
struct GuestRam(Vec<std::fs::File>);

impl GuestRam {
    fn hold(pid: u32) -> GuestRam {
        GuestRam(banger_sys::process::open_memfds(pid))
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        let files = std::mem::take(&mut self.0);
        if files.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || drop(files))),
            Err(_) => drop(files),
        }
    }
}

pub fn agent_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("agent.sock")
}

pub fn control_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("qmp.sock")
}

/// `path` as a value inside a QEMU option string (`file=…,format=…`), where
/// a comma ends the value unless doubled.
pub fn option_value(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// The `-qmp` argument for a control socket; [`QemuEngine::alive`] looks
/// for exactly this in a process's arguments.
fn qmp_arg(control: &Path) -> String {
    format!("unix:{},server=on,wait=off", option_value(control))
}

/// The kernel command line for a spec.
pub fn kernel_cmdline(spec: &MachineSpec) -> String {
    cmdline(spec.accel, spec.tsc_khz, spec.tcg_aslr, &spec.cmdline_extra)
}

/// The kernel command line a guest boots with under `accel`: banger's
/// arguments, then the image's `extra`. A warm snapshot records it (a
/// restored guest keeps the one it booted with).
pub fn cmdline(accel: Accel, tsc_khz: Option<u64>, tcg_aslr: bool, extra: &str) -> String {
    // random.trust_cpu: seed the kernel's RNG from RDRAND at boot. Without a
    // seeded RNG, getrandom(2) blocks for a long time in a fresh TCG guest,
    // and the agent (yamux picks random ids) hangs before serving.
    let mut args = vec![
        "console=ttyS0".to_string(),
        "reboot=t".into(),
        "panic=-1".into(),
        "quiet".into(),
        "random.trust_cpu=on".into(),
    ];
    if accel == Accel::Tcg
        && let Some(khz) = tsc_khz
    {
        // Without it the guest's clock calibration under TCG hangs at random.
        args.push(format!("tsc_early_khz={khz}"));
    }
    if accel == Accel::Tcg && !tcg_aslr {
        // QEMU 7.2's TCG keys translated code by virtual address: with
        // ASLR, libc and the loader sit elsewhere in every process and are
        // translated again, ~20 ms of every dynamically linked exec (a
        // debian `true` took 32 ms, 13 without). A guest can turn it back
        // on (sysctl kernel.randomize_va_space=2); config `tcg_aslr`.
        args.push("norandmaps".into());
    }
    if !extra.trim().is_empty() {
        args.push(extra.trim().to_string());
    }
    args.join(" ")
}

/// QEMU's arguments (without the program) for `spec`, booting: guest RAM
/// in a shared memfd ([`snapshot::boot_memory`]).
pub fn argv(spec: &MachineSpec) -> Vec<String> {
    argv_with(spec, &snapshot::boot_memory(spec))
}

/// QEMU's arguments for `spec` with `memory` as the guest RAM's backend.
pub fn argv_with(spec: &MachineSpec, memory: &str) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("banger-{},debug-threads=off", spec.name)]);
    push(&["-M", "microvm,memory-backend=mem", "-object", memory]);
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        // TCG emulates RDRAND only when asked; the guest's RNG needs it (see kernel_cmdline).
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "qemu64,+rdrand"]),
    }
    push(&[
        "-smp",
        &spec.cpus.to_string(),
        "-m",
        &format!("{}M", spec.memory_mib),
    ]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&["-kernel", &spec.kernel.to_string_lossy()]);
    if let Some(initrd) = &spec.initrd {
        push(&["-initrd", &initrd.to_string_lossy()]);
    }
    push(&["-append", &kernel_cmdline(spec)]);
    push(&[
        "-chardev",
        &format!(
            "file,id=console,path={},append=on",
            option_value(&spec.console_log)
        ),
    ]);
    push(&["-serial", "chardev:console"]);
    for (i, d) in spec.drives.iter().enumerate() {
        let format = match d.format {
            DriveFormat::Raw => "raw",
            DriveFormat::Qcow2 => "qcow2",
        };
        // A failed write pauses the guest (see `pause`) rather than failing in it.
        let ro = if d.read_only {
            ",read-only=on"
        } else {
            ",werror=stop"
        };
        push(&[
            "-drive",
            &format!(
                "id=disk{i},file={},format={format},if=none{ro}",
                option_value(&d.path)
            ),
        ]);
        push(&[
            "-device",
            &format!("virtio-blk-device,drive=disk{i},serial={}", d.serial),
        ]);
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        let (netdev, mac) = match nic {
            Nic::Tap { ifname, mac } => (
                format!("tap,id=net{i},ifname={ifname},script=no,downscript=no"),
                mac,
            ),
            Nic::User {
                mac,
                restrict,
                forwards,
            } => {
                let mut netdev = format!(
                    "user,id=net{i},restrict={}",
                    if *restrict { "on" } else { "off" }
                );
                for f in forwards {
                    netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
                }
                (netdev, mac)
            }
            Nic::Stream { socket, mac } => (
                format!(
                    "stream,id=net{i},server=off,addr.type=unix,addr.path={}",
                    option_value(socket)
                ),
                mac,
            ),
        };
        push(&["-netdev", &netdev]);
        push(&[
            "-device",
            &format!("virtio-net-device,netdev=net{i},mac={mac}"),
        ]);
    }
    push(&[
        "-chardev",
        &format!(
            "socket,id=agent,path={},server=on,wait=off",
            option_value(&agent_socket(&spec.run_dir))
        ),
    ]);
    push(&["-device", "virtio-serial-device,max_ports=2"]);
    push(&[
        "-device",
        &format!(
            "virtserialport,chardev=agent,name={}",
            banger_proto::PORT_NAME
        ),
    ]);
    push(&["-qmp", &qmp_arg(&control_socket(&spec.run_dir))]);
    push(&["-qmp", &qmp_arg(&pause::events_socket(&spec.run_dir))]);
    a
}

impl QemuEngine {
    async fn spawn_inner(
        &self,
        spec: &MachineSpec,
        args: Vec<String>,
    ) -> Result<Handles, EngineError> {
        std::fs::create_dir_all(&spec.run_dir)?;
        let agent = agent_socket(&spec.run_dir);
        let control = control_socket(&spec.run_dir);
        for stale in [&agent, &control, &pause::events_socket(&spec.run_dir)] {
            let _ = std::fs::remove_file(stale);
        }
        let cmd = Cmd::new(self.binary.to_string_lossy()).args(args);
        let mut child = self
            .spawner
            .spawn(&cmd, &SpawnOptions::detached(&spec.engine_log))
            .map_err(|source| EngineError::Spawn {
                program: self.binary.display().to_string(),
                source,
            })?;
        let pid = child.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return Err(EngineError::EarlyExit {
                    log: crate::layout::tail(&spec.engine_log, 8),
                });
            }
            if agent.exists() && control.exists() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(EngineError::SocketTimeout {
                    path: agent,
                    secs: 10,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let name = spec.name.clone();
        let (exited, exit) = watch::channel(false);
        self.exits_lock().insert(pid, exit);
        let exits = self.exits.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::info!(vm = %name, pid, ?status, "engine exited");
            let _ = exited.send(true);
            // Its pid may be a new engine's already.
            let mut exits = lock_exits(&exits);
            if exits.get(&pid).is_some_and(|e| *e.borrow()) {
                exits.remove(&pid);
            }
        });
        Ok(Handles {
            pid,
            accel: spec.accel,
            agent_socket: agent,
            control_socket: control,
            started_at: banger_sys::clock::unix_now(),
        })
    }

    async fn stop_inner(&self, handles: &Handles, timeout: Duration) -> Result<(), EngineError> {
        if !self.alive(handles) {
            // It may be exiting already (its daemon was killed, say) and
            // still hold its disks' locks: a new engine on them would fail.
            self.wait_gone(handles, Duration::ZERO).await;
            return Ok(());
        }
        let _ram = GuestRam::hold(handles.pid);
        if let Err(e) = qmp_command(&handles.control_socket, "quit").await {
            tracing::warn!(pid = handles.pid, error = %e, "qmp quit failed; killing");
        }
        if self.wait_gone(handles, timeout).await {
            return Ok(());
        }
        banger_sys::process::signal(handles.pid, banger_sys::process::Signal::Kill)?;
        self.wait_gone(handles, Duration::from_secs(5)).await;
        Ok(())
    }

    async fn decide_accel(&self, kernel: &Path) -> (Accel, KvmStatus) {
        let mut slot = self.decided.lock().await;
        if let Some(d) = slot.clone() {
            return d;
        }
        let d = accel::decide(
            &*self.spawner,
            self.accel_choice,
            &self.binary,
            kernel,
            &self.probe_cache,
        )
        .await;
        tracing::info!(accel = d.0.as_str(), kvm = ?d.1, "accelerator chosen");
        *slot = Some(d.clone());
        d
    }

    async fn checks_inner(&self, kernel: Option<&Path>) -> Vec<Check> {
        let check = |name: &str, status, detail: String, fix: Option<&str>| Check {
            name: name.into(),
            status,
            detail,
            fix: fix.map(Into::into),
        };
        let mut out = Vec::new();
        match self
            .runner
            .run(&Cmd::new(self.binary.to_string_lossy()).arg("--version"))
        {
            Ok(o) => {
                let v = o.stdout_lossy().lines().next().unwrap_or("").to_string();
                out.push(check("engine", CheckStatus::Pass, v, None));
            }
            Err(e) => out.push(check(
                "engine",
                CheckStatus::Fail,
                crate::error::chain(&e),
                Some("apt-get install qemu-system-x86"),
            )),
        }
        let status = match (accel::kvm_device_status(), kernel) {
            (Some(s), _) => s,
            (None, Some(k)) => self.decide_accel(k).await.1,
            (None, None) => {
                out.push(check(
                    "kvm",
                    CheckStatus::Warn,
                    "/dev/kvm opens; not probed yet (no image to boot)".into(),
                    Some("build an image: banger image build"),
                ));
                return out;
            }
        };
        let mode = format!("accel = {:?}", self.accel_choice).to_lowercase();
        out.push(match status {
            KvmStatus::Usable => check(
                "kvm",
                CheckStatus::Pass,
                format!("/dev/kvm boots a stock kernel ({mode})"),
                None,
            ),
            KvmStatus::Unusable { reason } => check(
                "kvm",
                CheckStatus::Warn,
                format!("/dev/kvm is unusable: {reason} ({mode})"),
                Some("guests run under TCG (software, slower); use a host with full KVM for speed"),
            ),
            KvmStatus::NotAccessible { reason } => check(
                "kvm",
                CheckStatus::Warn,
                reason,
                Some("guests run under TCG until then"),
            ),
            KvmStatus::Absent => check(
                "kvm",
                CheckStatus::Warn,
                format!("/dev/kvm is absent ({mode})"),
                Some("guests run under TCG (software, slower); enable virtualization for speed"),
            ),
        });
        out
    }
}

/// Runs one QMP command (after the capabilities negotiation); its `return`.
pub async fn qmp_command(socket: &Path, command: &str) -> Result<serde_json::Value, EngineError> {
    let mut q = qmp::Qmp::connect(socket).await?;
    match q.execute(command, serde_json::Value::Null).await {
        // `quit` may close the socket before answering.
        Err(_) if command == "quit" => Ok(serde_json::Value::Null),
        other => other,
    }
}

impl Engine for QemuEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Qemu
    }

    fn version(&self) -> String {
        self.version
            .get_or_init(|| {
                let out = self
                    .runner
                    .run(&Cmd::new(self.binary.to_string_lossy()).arg("--version"))
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let line = out.lines().next().unwrap_or("unknown version");
                format!("{} ({line})", self.binary.display())
            })
            .clone()
    }

    fn root_drive(&self, dir: &VmDir) -> Drive {
        Drive {
            path: dir.file(ROOT_DISK),
            format: DriveFormat::Qcow2,
            serial: banger_proto::ROOT_DRIVE_SERIAL,
            read_only: false,
        }
    }

    fn create_root_disk(&self, base: &Path, dir: &VmDir) -> Result<(), EngineError> {
        let overlay = dir.file(ROOT_DISK);
        qcow2::virtual_size(base, DriveFormat::Raw)
            .and_then(|size| qcow2::write_overlay(&overlay, base, DriveFormat::Raw, size))
            .map_err(|source| EngineError::Overlay {
                path: overlay,
                source,
            })
    }

    fn accel<'a>(&'a self, kernel: &'a Path) -> BoxFuture<'a, (Accel, KvmStatus)> {
        Box::pin(self.decide_accel(kernel))
    }

    fn accel_needs_probe(&self, kernel: &Path) -> bool {
        self.decided.try_lock().is_ok_and(|d| d.is_none())
            && self.accel_choice == AccelChoice::Auto
            && accel::kvm_device_status().is_none()
            && accel::cached(&self.probe_cache, &self.binary, kernel).is_none()
    }

    fn sockets(&self, run_dir: &Path) -> Sockets {
        Sockets {
            agent: agent_socket(run_dir),
            control: control_socket(run_dir),
        }
    }

    fn spawn<'a>(&'a self, spec: &'a MachineSpec) -> BoxFuture<'a, Result<Handles, EngineError>> {
        Box::pin(async move {
            // A tap made a moment ago can still be held by a child another
            // thread is forking (until its exec drops close-on-exec files):
            // QEMU's open then fails with EBUSY. That passes; try once more.
            match self.spawn_inner(spec, argv(spec)).await {
                Err(EngineError::EarlyExit { log })
                    if spec.nics.iter().any(|n| matches!(n, Nic::Tap { .. }))
                        && log.contains("Device or resource busy") =>
                {
                    tracing::warn!(vm = %spec.name, %log, "tap busy at engine start; retrying");
                    tokio::time::sleep(banger_sys::net::tap::BUSY_WAIT).await;
                    self.spawn_inner(spec, argv(spec)).await
                }
                other => other,
            }
        })
    }

    fn connect_agent<'a>(
        &'a self,
        handles: &'a Handles,
    ) -> BoxFuture<'a, Result<UnixStream, EngineError>> {
        Box::pin(async move {
            UnixStream::connect(&handles.agent_socket)
                .await
                .map_err(|source| EngineError::Connect {
                    path: handles.agent_socket.clone(),
                    source,
                })
        })
    }

    fn stop<'a>(
        &'a self,
        handles: &'a Handles,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(self.stop_inner(handles, timeout))
    }

    /// SIGKILL, no QMP `quit` (a round trip and QEMU's orderly exit, ~35
    /// ms). Once it is sent QEMU runs no more of its own code: the kernel's
    /// teardown of the process (~20 ms) is what the returned future waits
    /// for, with the guest's RAM held open so freeing it comes after.
    fn kill<'a>(
        &'a self,
        handles: &'a Handles,
    ) -> BoxFuture<'a, Result<BoxFuture<'a, ()>, EngineError>> {
        Box::pin(async move {
            let ram = self.alive(handles).then(|| GuestRam::hold(handles.pid));
            if ram.is_some() {
                banger_sys::process::signal(handles.pid, banger_sys::process::Signal::Kill)?;
            }
            Ok(Box::pin(async move {
                self.wait_gone(handles, Duration::from_secs(5)).await;
                drop(ram);
            }) as BoxFuture<'a, ()>)
        })
    }

    /// Alive, and provably this VM's QEMU: it runs the configured binary
    /// (a path the kernel marks deleted after an upgrade still counts), as
    /// our uid, with this VM's exact `-qmp` argument. Handles may come from
    /// a scratch file anyone with our uid could have written; a process
    /// that fails any of this is never signalled.
    fn alive(&self, handles: &Handles) -> bool {
        let Some(binary) = self.binary_path() else {
            return false;
        };
        let Some(p) = banger_sys::process::identity(handles.pid) else {
            return false;
        };
        let me = banger_sys::process::euid();
        let qmp = qmp_arg(&handles.control_socket);
        p.uid == me && p.euid == me && p.exe == binary && p.args.contains(&qmp)
    }

    /// Gone means gone: an exiting QEMU stops looking like itself (its
    /// executable link goes with its memory) a moment before its threads
    /// are dead, longer with a large memfd to free; wait for that too, so a
    /// stopped or deleted VM leaves no process behind when the call returns.
    fn wait_gone<'a>(&'a self, handles: &'a Handles, timeout: Duration) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            // An engine this daemon spawned is its child: its reaping says
            // when it is gone, threads and memory too, without polling.
            let exit = self.exits_lock().get(&handles.pid).cloned();
            if let Some(mut exit) = exit {
                let reaped = tokio::time::timeout(timeout, exit.wait_for(|gone| *gone)).await;
                return reaped.is_ok();
            }
            if !super::wait_while(timeout, Duration::from_millis(20), || self.alive(handles)).await
            {
                return false;
            }
            // Exiting (the stop may have been quick enough that it never
            // looked alive here): only its command name is left to know it by.
            let exiting = || {
                banger_sys::process::comm(handles.pid).is_some_and(|c| c.starts_with("qemu-system"))
            };
            super::wait_while(Duration::from_secs(5), Duration::from_millis(10), exiting).await;
            true
        })
    }

    fn checks<'a>(&'a self, kernel: Option<&'a Path>) -> BoxFuture<'a, Vec<Check>> {
        Box::pin(self.checks_inner(kernel))
    }

    fn create_layer(&self, base: &Layer, overlay: &Path) -> Result<(), EngineError> {
        snapshot::create_layer(base, overlay)
    }

    fn copy_layer(
        &self,
        top: &Layer,
        base: Option<&Layer>,
        dest: &Layer,
    ) -> Result<(), EngineError> {
        snapshot::copy_layer(&*self.runner, top, base, dest)
    }

    fn rebase_layer(&self, layer: &Layer, base: &Layer) -> Result<(), EngineError> {
        snapshot::rebase_layer(&*self.runner, layer, base)
    }

    fn resume_interrupted<'a>(
        &'a self,
        handles: &'a Handles,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(snapshot::resume_interrupted(handles))
    }

    fn snapshot<'a>(
        &'a self,
        handles: &'a Handles,
        dir: &'a Path,
        switch: &'a [Switch],
        resume: bool,
    ) -> BoxFuture<'a, Result<SnapshotReport, EngineError>> {
        Box::pin(snapshot::snapshot(self, handles, dir, switch, resume))
    }

    fn restore<'a>(
        &'a self,
        spec: &'a MachineSpec,
        from: &'a Path,
        ram: RamMapping,
    ) -> BoxFuture<'a, Result<Handles, EngineError>> {
        Box::pin(snapshot::restore(self, spec, from, ram))
    }

    fn follow_pause<'a>(
        &'a self,
        handles: &'a Handles,
        tx: tokio::sync::watch::Sender<Option<Pause>>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(run_dir) = handles.control_socket.parent() {
                pause::follow(&pause::events_socket(run_dir), tx).await;
            }
        })
    }

    fn pause<'a>(&'a self, handles: &'a Handles) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move { qmp_command(&handles.control_socket, "stop").await.map(drop) })
    }

    fn resume<'a>(&'a self, handles: &'a Handles) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move { qmp_command(&handles.control_socket, "cont").await.map(drop) })
    }
}

pub mod pause;
pub mod qcow2;
mod qmp;
pub mod snapshot;
#[cfg(test)]
mod tests;
