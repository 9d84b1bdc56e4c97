//! The fixed file names inside an image directory, shared with the engines
//! that boot them:
//!
//! | file | what |
//! |---|---|
//! | `vmlinux` or `bzImage` | the kernel: uncompressed ELF with a PVH entry when we could get one |
//! | `initrd.img` | newc cpio(s): the user's initrd if any, then ours with the agent as `/init` |
//! | `rootfs.ext4` | raw ext4, the read-only base of every VM's system disk |
//! | `work-seed.ext4` | small ext4 copied and grown into each VM's work disk (`/root`) |
//! | `manifest.json` | [`crate::Manifest`]: fingerprints, kernel version, module list |
//!
//! Inside our initramfs the agent finds its kernel modules at
//! [`INITRD_MODULE_DIR`] and their load order in [`INITRD_MODULE_LIST`].

pub const VMLINUX: &str = "vmlinux";
pub const BZIMAGE: &str = "bzImage";
pub const INITRD: &str = "initrd.img";
pub const ROOTFS: &str = "rootfs.ext4";
pub const WORK_SEED: &str = "work-seed.ext4";
pub const MANIFEST: &str = "manifest.json";

/// Directory of the `.ko` files inside the initramfs, as the guest sees it.
pub const INITRD_MODULE_DIR: &str = "/lib/modules/banger";
/// Module file names in load order, one per line.
pub const INITRD_MODULE_LIST: &str = "/etc/banger/modules";
/// Where the agent mounts the root disk before switching to it.
pub const INITRD_NEWROOT: &str = "/newroot";
