//! The named stages of image operations and the events a caller sees while
//! they run. The stage lists are public so the daemon can show every stage
//! up front; each stage is reported as [`BuildEvent::StageStarted`], any
//! number of [`BuildEvent::Progress`], then [`BuildEvent::StageFinished`].
//! A failing stage reports no finish: the operation's error follows.

use std::time::Instant;

use crate::ImageError;

/// One stage: a stable name (for logs, tests, kill points) and a label for
/// humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub name: &'static str,
    pub label: &'static str,
}

pub const FETCH_PACKAGES: Stage = Stage {
    name: "fetch_packages",
    label: "fetch kernel and busybox packages",
};
pub const EXTRACT_KERNEL: Stage = Stage {
    name: "extract_kernel",
    label: "extract the kernel and its modules",
};
pub const INITRAMFS: Stage = Stage {
    name: "initramfs",
    label: "write the initramfs",
};
pub const ROOTFS: Stage = Stage {
    name: "rootfs",
    label: "make the root filesystem",
};
pub const WORK_SEED: Stage = Stage {
    name: "work_seed",
    label: "make the work disk seed",
};
pub const MANIFEST: Stage = Stage {
    name: "manifest",
    label: "fingerprint the files and finish the image",
};
pub const VALIDATE: Stage = Stage {
    name: "validate",
    label: "check the kernel, root filesystem and initrd",
};
pub const KERNEL: Stage = Stage {
    name: "kernel",
    label: "prepare the kernel",
};
pub const COPY_ROOTFS: Stage = Stage {
    name: "rootfs",
    label: "copy the root filesystem",
};
pub const FETCH_KERNEL: Stage = Stage {
    name: "fetch_packages",
    label: "fetch the kernel package",
};
pub const DEBOOTSTRAP: Stage = Stage {
    name: "debootstrap",
    label: "install Debian with mmdebstrap",
};

/// The stages of [`crate::build_minimal`], in order.
pub const MINIMAL_STAGES: &[Stage] = &[
    FETCH_PACKAGES,
    EXTRACT_KERNEL,
    INITRAMFS,
    ROOTFS,
    WORK_SEED,
    MANIFEST,
];
/// The stages of [`crate::build_debian`], in order.
pub const DEBIAN_STAGES: &[Stage] = &[
    FETCH_KERNEL,
    EXTRACT_KERNEL,
    INITRAMFS,
    DEBOOTSTRAP,
    ROOTFS,
    WORK_SEED,
    MANIFEST,
];
/// The stages of [`crate::register`], in order.
pub const REGISTER_STAGES: &[Stage] = &[
    VALIDATE,
    KERNEL,
    INITRAMFS,
    COPY_ROOTFS,
    WORK_SEED,
    MANIFEST,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    StageStarted {
        name: &'static str,
        label: &'static str,
    },
    /// `detail` is a short human summary (`vmlinux 51.0 MiB, 11 modules`).
    StageFinished {
        name: &'static str,
        detail: Option<String>,
    },
    Progress {
        name: &'static str,
        message: String,
    },
}

/// Runs stages in order, reporting and logging each with its duration.
pub(crate) struct Reporter<'a> {
    image: &'a str,
    report: &'a mut dyn FnMut(BuildEvent),
}

impl<'a> Reporter<'a> {
    pub fn new(image: &'a str, report: &'a mut dyn FnMut(BuildEvent)) -> Self {
        Reporter { image, report }
    }

    /// Runs `body` as `stage`; `body` gets a progress callback and returns
    /// its value with an optional detail for the finish event.
    pub fn stage<T>(
        &mut self,
        stage: Stage,
        body: impl FnOnce(&mut dyn FnMut(String)) -> Result<(T, Option<String>), ImageError>,
    ) -> Result<T, ImageError> {
        let started = Instant::now();
        (self.report)(BuildEvent::StageStarted {
            name: stage.name,
            label: stage.label,
        });
        let report = &mut *self.report;
        let mut progress = |message: String| {
            tracing::debug!(image = %self.image, stage = stage.name, "{message}");
            report(BuildEvent::Progress {
                name: stage.name,
                message,
            });
        };
        let result = body(&mut progress);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok((value, detail)) => {
                tracing::info!(image = %self.image, stage = stage.name, elapsed_ms, detail = detail.as_deref().unwrap_or(""), "stage finished");
                (self.report)(BuildEvent::StageFinished {
                    name: stage.name,
                    detail,
                });
                Ok(value)
            }
            Err(e) => {
                tracing::warn!(image = %self.image, stage = stage.name, elapsed_ms, error = %e, "stage failed");
                Err(e)
            }
        }
    }
}

/// `52428800` → `50.0 MiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}
