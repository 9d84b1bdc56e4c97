//! VM lifecycle: the recorded state machine, the [`Lifecycle`] service and
//! one file per operation (create, start and the boot it shares with
//! create, stop and restart, delete, reconcile at daemon start, the
//! monitor that records engines found dead). Each operation checks the
//! transition it may make at the top, runs named stages with an undo stack,
//! and records the outcome at the end.

pub mod boot;
pub mod caller;
pub mod clone;
pub mod create;
pub mod delete;
pub mod fork;
pub mod layers;
pub mod leaks;
pub mod lifecycle;
pub mod monitor;
pub mod names;
pub mod pause;
pub mod reconcile;
pub mod restore;
pub mod runtime;
pub mod snapshot;
pub mod ssh;
pub mod standby;
pub mod start;
pub mod stop;
pub mod undo;
pub mod warm;

#[cfg(test)]
mod agent_tests;
#[cfg(test)]
mod fork_tests;
#[cfg(test)]
mod identity_tests;
#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod standby_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod warm_tests;

pub use lifecycle::{Lifecycle, LifecycleDeps};

use banger_api::VmState;

pub fn can_start(s: VmState) -> bool {
    matches!(s, VmState::Stopped | VmState::Failed)
}

pub fn can_stop(s: VmState) -> bool {
    matches!(s, VmState::Running)
}

/// Delete is refused only while another operation is creating the VM.
pub fn can_delete(s: VmState) -> bool {
    !matches!(s, VmState::Creating)
}

pub fn can_exec(s: VmState) -> bool {
    matches!(s, VmState::Running)
}

#[cfg(test)]
mod transition_tests {
    use super::*;

    #[test]
    fn transitions() {
        assert!(can_start(VmState::Stopped) && can_start(VmState::Failed));
        assert!(!can_start(VmState::Running) && !can_start(VmState::Creating));
        assert!(can_stop(VmState::Running) && !can_stop(VmState::Stopped));
        assert!(
            can_delete(VmState::Running)
                && can_delete(VmState::Failed)
                && !can_delete(VmState::Creating)
        );
        assert!(can_exec(VmState::Running) && !can_exec(VmState::Stopped));
    }
}
