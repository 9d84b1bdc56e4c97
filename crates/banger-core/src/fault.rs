//! Kill points for the crash tests. Every stage of every operation is a
//! named point, `KIND:STAGE` when it begins and `KIND:STAGE/done` when it
//! ends (`create:engine`, `delete:files/done`, `image_build:rootfs`). When
//! the daemon's environment names one in `BANGER_FAULT_AT`, the daemon
//! kills itself with SIGKILL on reaching it, the way a crash or `kill -9`
//! would, and the crash tests then check that the next daemon leaves
//! nothing behind. The points are the stages themselves, so the harness
//! covers every step there is without a list kept by hand; unset (always,
//! outside the tests) it costs one comparison per stage.

use banger_api::OperationKind;
use std::sync::OnceLock;

/// The environment variable naming the point to die at.
pub const ENV: &str = "BANGER_FAULT_AT";

fn wanted() -> Option<&'static str> {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    AT.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// The name of a point.
pub fn name(kind: OperationKind, stage: &str, done: bool) -> String {
    let kind = serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    format!("{kind}:{stage}{}", if done { "/done" } else { "" })
}

/// Dies here if this is the point asked for.
pub fn point(kind: OperationKind, stage: &str, done: bool) {
    let Some(at) = wanted() else { return };
    let here = name(kind, stage, done);
    tracing::debug!(point = %here, "kill point");
    if at == here {
        tracing::warn!(point = %here, "{ENV}: killing the daemon here");
        let _ = banger_sys::process::signal(
            banger_sys::process::own_pid(),
            banger_sys::process::Signal::Kill,
        );
        // SIGKILL to ourselves does not return; should it, stop anyway.
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_named_by_kind_and_stage() {
        assert_eq!(
            name(OperationKind::Create, "engine", false),
            "create:engine"
        );
        assert_eq!(
            name(OperationKind::ImageBuild, "rootfs", true),
            "image_build:rootfs/done"
        );
    }
}
