//! Booting the guest as its init, from the initramfs to the root disk. Owns
//! the early mounts, kernel modules, the config drive and the switch of root;
//! the rest of system set-up is `setup.rs`'s, serving is `port.rs`'s.
//!
//! 1. Mount devtmpfs on `/dev` and make `/dev/console` our stdout/stderr,
//!    then proc on `/proc` and sysfs on `/sys`.
//! 2. Load the modules named in [`MODULE_LIST`], in order, from
//!    [`MODULE_DIR`] (`init_module` without their signatures, see
//!    [`load_module`]; already loaded is fine), but a driver of virtio
//!    devices the guest lacks and the helpers only it needs (`modinfo`: no
//!    network device, no `virtio_net`).
//! 3. Wait for the root and config disks to appear by serial number; the
//!    work disk is optional.
//! 4. Read the [`GuestConfig`] from the raw config drive.
//! 5. Mount the root disk (ext4) on [`NEW_ROOT`] and start reading ahead
//!    the files every first command needs ([`EXEC_PREFETCH`]), then mount
//!    the work disk on its `/root`.
//! 6. Switch root without exec, as `switch_root` does: move `/dev`, `/proc`
//!    and `/sys` under the new root, move the new root onto `/`,
//!    `chroot(".")`. The agent stays PID 1. The initramfs (RAM) is emptied
//!    afterwards by a thread that runs only when the guest's CPU is idle
//!    ([`free_initramfs_when_idle`]): its files are a few hundred KB once
//!    the agent runs (the running agent's own pages stay anyway), and
//!    unlinking them cost ~7 ms of every boot under TCG.
//!
//! Only a root disk that cannot be mounted is fatal; every other failure is
//! logged and boot goes on without that piece.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_proto::{
    CONFIG_DRIVE_SERIAL, CONFIG_DRIVE_SIZE, GuestConfig, ROOT_DRIVE_SERIAL, WORK_DRIVE_SERIAL,
};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountFlags;

use crate::console::{log, step};
use crate::devices;
use crate::modinfo::{self, ModInfo};

/// Kernel modules to load, one file name per line, in the initramfs.
pub const MODULE_LIST: &str = "/etc/banger/modules";
/// Where the listed `.ko` files are, in the initramfs.
pub const MODULE_DIR: &str = "/lib/modules/banger";
/// Where the root disk is mounted before it becomes `/`.
pub const NEW_ROOT: &str = "/newroot";
/// Where the kernel lists virtio devices, drivers loaded or not.
pub const VIRTIO_BUS: &str = "/sys/bus/virtio/devices";
/// What the guest's first command will read from the root disk whatever it
/// is: the dynamic loader, libc and the shell (busybox on images without
/// glibc). Boot asks the kernel to read them ahead (`POSIX_FADV_WILLNEED`
/// queues the reads and returns) while it goes on mounting; under TCG the
/// first command then took 65-78 ms, not 85-130, for 3-18 ms of boot.
pub const EXEC_PREFETCH: [&str; 3] = [
    "lib64/ld-linux-x86-64.so.2",
    "lib/x86_64-linux-gnu/libc.so.6",
    "bin/sh",
];
/// How long to wait for the root and config disks.
pub const DISK_TIMEOUT: Duration = Duration::from_secs(10);

/// `statfs` magic numbers of the filesystems an initramfs can be.
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("mounting {fstype} {source_name} on {target}")]
    Mount {
        fstype: &'static str,
        source_name: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("moving the mount {from} to {to}")]
    MoveMount {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no disk with serial {serial} appeared within {timeout:?}: if this kernel builds virtio as modules, give `banger image register` its modules with --modules"
    )]
    DiskMissing {
        serial: &'static str,
        timeout: Duration,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading kernel module {path}")]
    Module {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("switching root to {NEW_ROOT}")]
    SwitchRoot {
        #[source]
        source: io::Error,
    },
}

/// What boot found out, for the steps after it.
#[derive(Debug, Default)]
pub struct Booted {
    pub config: GuestConfig,
    pub work_disk: bool,
    /// The initramfs's root, left behind `/` and not yet emptied.
    pub initramfs: Option<OwnedFd>,
}

/// Runs steps 1-6. An error means the guest cannot come up.
pub fn boot() -> Result<Booted, BootError> {
    early_mounts();
    if let Some(up) = crate::console::uptime() {
        log(format_args!(
            "uptime at init ({})",
            crate::console::Millis(up)
        ));
    }
    load_modules();

    let disks = step("found disks", || {
        let disks = devices::wait_for_disks(
            Path::new("/sys/block"),
            Path::new("/dev"),
            &[ROOT_DRIVE_SERIAL, CONFIG_DRIVE_SERIAL],
            DISK_TIMEOUT,
        );
        match disks.contains_key(ROOT_DRIVE_SERIAL) {
            true => Ok(disks),
            false => Err(BootError::DiskMissing {
                serial: ROOT_DRIVE_SERIAL,
                timeout: DISK_TIMEOUT,
            }),
        }
    })?;
    let dev = |serial: &str| {
        disks
            .get(serial)
            .map(|name| PathBuf::from("/dev").join(name))
    };

    let config = match dev(CONFIG_DRIVE_SERIAL) {
        Some(path) => step("read the config drive", || read_config(&path)).unwrap_or_default(),
        None => {
            log(format_args!(
                "no config drive ({CONFIG_DRIVE_SERIAL}): using defaults"
            ));
            GuestConfig::default()
        }
    };

    let root = dev(ROOT_DRIVE_SERIAL).expect("checked above");
    std::fs::create_dir_all(NEW_ROOT).ok();
    step(&format!("mounted {} on {NEW_ROOT}", root.display()), || {
        mount_ext4(&root.display().to_string(), Path::new(NEW_ROOT))
    })?;
    let _ = step("read ahead the loader, libc and sh", || {
        read_ahead(Path::new(NEW_ROOT), &EXEC_PREFETCH);
        Ok::<_, io::Error>(())
    });
    let work_disk = match dev(WORK_DRIVE_SERIAL) {
        Some(work) => {
            let target = Path::new(NEW_ROOT).join("root");
            std::fs::create_dir_all(&target).ok();
            step(&format!("mounted {} on /root", work.display()), || {
                mount_ext4(&work.display().to_string(), &target)
            })
            .is_ok()
        }
        None => {
            log(format_args!("no work disk ({WORK_DRIVE_SERIAL})"));
            false
        }
    };

    let initramfs = step("switched root", switch_root)?;
    Ok(Booted {
        config,
        work_disk,
        initramfs,
    })
}

/// Starts reading `files` (paths under `root`, symlinks followed with
/// `root` as `/`: Debian's loader is `lib64/ld-linux-x86-64.so.2 ->
/// /lib/x86_64-linux-gnu/…`, which before the switch of root would
/// otherwise resolve in the initramfs) into the page cache; returns the
/// ones that exist. Missing files are skipped: an image need not have them
/// all.
pub fn read_ahead<'a>(root: &Path, files: &[&'a str]) -> Vec<&'a str> {
    use rustix::fs::{Mode, ResolveFlags};
    let Ok(dir) = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    files
        .iter()
        .copied()
        .filter(|f| {
            match rustix::fs::openat2(
                &dir,
                *f,
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT,
            ) {
                Ok(file) => rustix::fs::fadvise(&file, 0, 0, rustix::fs::Advice::WillNeed).is_ok(),
                Err(_) => false,
            }
        })
        .collect()
}

/// Step 1. Failures are logged; a guest without `/proc` still serves.
fn early_mounts() {
    for dir in ["/dev", "/proc", "/sys"] {
        std::fs::create_dir_all(dir).ok();
    }
    // The kernel may have mounted devtmpfs already (CONFIG_DEVTMPFS_MOUNT).
    let dev = mount("devtmpfs", Path::new("/dev"), "devtmpfs", "mode=0755");
    if let Ok(console) =
        rustix::fs::open("/dev/console", OFlags::RDWR | OFlags::NOCTTY, Mode::empty())
    {
        let _ = rustix::stdio::dup2_stdout(&console);
        let _ = rustix::stdio::dup2_stderr(&console);
    }
    if let Ok(null) = rustix::fs::open("/dev/null", OFlags::RDWR, Mode::empty()) {
        let _ = rustix::stdio::dup2_stdin(&null);
    }
    match dev {
        Ok(()) => log(format_args!("mounted /dev")),
        Err(e) => log(format_args!(
            "mounting /dev failed: {}",
            crate::console::chain(&e)
        )),
    }
    let _ = step("mounted /proc", || {
        mount("proc", Path::new("/proc"), "proc", "")
    });
    let _ = step("mounted /sys", || {
        mount("sysfs", Path::new("/sys"), "sysfs", "")
    });
}

/// Step 2.
fn load_modules() {
    let start = std::time::Instant::now();
    let list = match std::fs::read_to_string(MODULE_LIST) {
        Ok(list) => banger_proto::modules::parse_module_list(&list),
        Err(e) => {
            log(format_args!("no module list {MODULE_LIST}: {e}"));
            return;
        }
    };
    let infos: Vec<ModInfo> = list.iter().map(ModInfo::from_listed).collect();
    log(format_args!(
        "read the modules' info ({})",
        crate::console::Millis::since(start)
    ));
    let mut devices = modinfo::read_once_found(|| modinfo::virtio_devices(Path::new(VIRTIO_BUS)));
    for (i, listed) in list.iter().enumerate() {
        let name = &listed.file_name;
        if !modinfo::needed(&infos, i, &mut devices) {
            log(format_args!("skipped {name}: no virtio device needs it"));
            continue;
        }
        let path = Path::new(MODULE_DIR).join(name);
        let _ = step(&format!("loaded {name}"), || load_module(&path));
    }
}

/// Loads the module at `path`, first without its signature:
/// checking one (a SHA-256 of the module and an RSA verification) costs a
/// TCG guest 3-7 ms a module, and a kernel that does not enforce signatures
/// loads an unsigned module all the same (noting taint `E` in its log). One
/// that enforces them (`module.sig_enforce`, lockdown) refuses it, and gets
/// the signed module.
fn load_module(path: &Path) -> Result<(), BootError> {
    let err = |source: io::Error| BootError::Module {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(err)?;
    let load = |image: &[u8]| match rustix::system::init_module(image, c"") {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
    };
    let unsigned = modinfo::without_signature(&bytes);
    match load(unsigned) {
        Err(Errno::KEYREJECTED | Errno::PERM) if unsigned.len() < bytes.len() => load(&bytes),
        other => other,
    }
    .map_err(|e| err(e.into()))
}

/// Step 4: the JSON config, NUL-padded on the raw drive.
fn read_config(path: &Path) -> Result<GuestConfig, BootError> {
    let err = |source: io::Error| BootError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::with_capacity(CONFIG_DRIVE_SIZE);
    let file = std::fs::File::open(path).map_err(err)?;
    io::Read::read_to_end(
        &mut io::Read::take(file, CONFIG_DRIVE_SIZE as u64),
        &mut bytes,
    )
    .map_err(err)?;
    GuestConfig::from_drive(&bytes).map_err(err)
}

/// Step 6. Returns the initramfs's root when it is RAM to be freed.
fn switch_root() -> Result<Option<OwnedFd>, BootError> {
    let new_root = Path::new(NEW_ROOT);
    for dir in ["/dev", "/proc", "/sys"] {
        let to = new_root.join(&dir[1..]);
        std::fs::create_dir_all(&to).ok();
        rustix::mount::mount_move(dir, &to).map_err(|e| BootError::MoveMount {
            from: dir.into(),
            to: to.clone(),
            source: e.into(),
        })?;
    }
    let initramfs = initramfs_root();
    let switch = || -> rustix::io::Result<()> {
        rustix::process::chdir(new_root)?;
        rustix::mount::mount_move(".", "/")?;
        rustix::process::chroot(".")?;
        rustix::process::chdir("/")
    };
    switch().map_err(|e| BootError::SwitchRoot { source: e.into() })?;
    Ok(initramfs)
}

/// `/`, opened, when it is a RAM filesystem and we are init: the
/// initramfs, whose files would otherwise hold RAM for the guest's life.
fn initramfs_root() -> Option<OwnedFd> {
    let is_ram = rustix::fs::statfs("/").is_ok_and(|s| {
        #[allow(clippy::unnecessary_cast)] // the field's type differs per architecture
        let magic = s.f_type as i64;
        magic == RAMFS_MAGIC || magic == TMPFS_MAGIC
    });
    if !is_ram || !crate::is_init() {
        return None;
    }
    rustix::fs::open(
        "/",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// Deletes the files of the initramfs behind `root` (from
/// [`Booted::initramfs`]) on a thread that runs only when nothing else
/// wants the CPU, never crossing into another mount.
pub fn free_initramfs_when_idle(root: OwnedFd) {
    let free = move || {
        if let Err(e) = banger_sys::process::run_only_when_idle() {
            log(format_args!(
                "freeing the initramfs at normal priority: {e}"
            ));
        }
        let start = std::time::Instant::now();
        let Ok(dev) = rustix::fs::fstat(&root).map(|st| st.st_dev) else {
            return;
        };
        // The magic link reaches the old root behind the new one.
        let dir = PathBuf::from(format!("/proc/self/fd/{}", root.as_raw_fd()));
        #[allow(clippy::unnecessary_cast)] // the field's type differs per architecture
        remove_tree_on(&dir, dev as u64);
        log(format_args!(
            "freed the initramfs ({})",
            crate::console::Millis::since(start)
        ));
    };
    if let Err(e) = std::thread::Builder::new()
        .name("free-initramfs".into())
        .spawn(free)
    {
        log(format_args!("cannot free the initramfs: {e}"));
    }
}

fn remove_tree_on(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_tree_on(&path, dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Mount options for the root and work disks: no background work on them
/// after mounting. Unless told, ext4 starts a thread that zeroes the inode
/// tables `mke2fs` left to do (a work disk has 32 such groups) and reads
/// every block bitmap ahead, at a random moment in the first five seconds:
/// the guest's one CPU, taken from boot or the first command. The tables
/// are zero already (the images are sparse files) and bitmaps are read
/// when needed anyway.
pub const EXT4_OPTIONS: &str = "noinit_itable,no_prefetch_block_bitmaps";

/// Mounts the ext4 filesystem on `source` at `target` with [`EXT4_OPTIONS`]
/// (or without, on a kernel that knows neither) and `noatime`: files in a
/// fresh VM have an access time no later than their change time, so with
/// the default `relatime` the first read of every file (the loader, libc,
/// the repository's) would write its inode, a journal transaction each.
fn mount_ext4(source: &str, target: &Path) -> Result<(), BootError> {
    let flags = MountFlags::NOATIME;
    match mount_with(source, target, "ext4", flags, EXT4_OPTIONS) {
        Err(BootError::Mount { source: e, .. })
            if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) =>
        {
            log(format_args!(
                "mounting {source} with {EXT4_OPTIONS} failed ({e}): mounting it without"
            ));
            mount_with(source, target, "ext4", flags, "")
        }
        other => other,
    }
}

/// `mount(2)` with the error naming what was mounted where.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &'static str,
    data: &str,
) -> Result<(), BootError> {
    mount_with(source, target, fstype, MountFlags::empty(), data)
}

fn mount_with(
    source: &str,
    target: &Path,
    fstype: &'static str,
    flags: MountFlags,
    data: &str,
) -> Result<(), BootError> {
    rustix::mount::mount(source, target, fstype, flags, data).map_err(|e| BootError::Mount {
        fstype,
        source_name: source.to_string(),
        target: target.to_path_buf(),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_follows_links_inside_the_root_and_skips_what_the_image_lacks() {
        let root = tempfile::tempdir().unwrap();
        for dir in ["bin", "lib64", "lib/x86_64-linux-gnu"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        std::fs::write(root.path().join("bin/busybox"), b"\x7fELF").unwrap();
        std::os::unix::fs::symlink("busybox", root.path().join("bin/sh")).unwrap();
        assert_eq!(read_ahead(root.path(), &EXEC_PREFETCH), ["bin/sh"]);
        // Debian's loader: an absolute link, which must resolve in the
        // root given, not in the agent's own.
        std::fs::write(root.path().join("lib/x86_64-linux-gnu/ld-2.so"), b"\x7fELF").unwrap();
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/ld-2.so",
            root.path().join("lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        assert_eq!(
            read_ahead(root.path(), &EXEC_PREFETCH),
            ["lib64/ld-linux-x86-64.so.2", "bin/sh"]
        );
    }

    #[test]
    fn config_is_read_from_a_padded_drive_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.img");
        let cfg = GuestConfig {
            version: 1,
            vm_name: "web".into(),
            hostname: "web-1".into(),
            authorized_keys: vec![],
            network: None,
            git_identity: vec!["user.name".into(), "Ann".into()],
            ssh_host_key: None,
        };
        std::fs::write(&path, cfg.to_drive().unwrap()).unwrap();
        assert_eq!(read_config(&path).unwrap(), cfg);
    }
}
