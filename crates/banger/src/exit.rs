//! Exit statuses. Success is 0, usage errors 2 (clap's), other failures 1.
//! `vm run` and `vm exec` pass the guest command's status through, so their
//! own failures use the codes `docker run` uses: 125 when banger or the VM
//! failed, 126 when the command could not be started, 127 when it does not
//! exist in the guest.

/// Status of a failure in most commands.
pub const FAILURE: i32 = 1;
/// Status of banger's own failures in commands that pass a guest status through.
pub const GUEST_RUNNER_FAILURE: i32 = 125;
pub const NOT_EXECUTABLE: i32 = 126;
pub const NOT_FOUND: i32 = 127;
/// Status of a command the user interrupted (Ctrl-C), as a shell reports
/// one SIGINT ended.
pub const INTERRUPTED: i32 = 130;

/// A failure that carries its own exit status; its message is printed like
/// any other error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitError {
    pub code: i32,
    pub message: String,
}

impl ExitError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        ExitError {
            code,
            message: message.into(),
        }
    }
}

/// The status to exit with after `err`: the one it carries, if any, else the
/// command's default failure status.
pub fn code_of(err: &anyhow::Error, default: i32) -> i32 {
    err.chain()
        .find_map(|e| e.downcast_ref::<ExitError>())
        .map_or(default, |e| e.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_errors_use_the_commands_default() {
        assert_eq!(code_of(&anyhow::anyhow!("daemon said no"), FAILURE), 1);
        assert_eq!(
            code_of(&anyhow::anyhow!("vm failed"), GUEST_RUNNER_FAILURE),
            125
        );
    }

    #[test]
    fn exit_errors_keep_their_status_even_when_wrapped() {
        let err = anyhow::Error::new(ExitError::new(NOT_FOUND, "nope: not found"))
            .context("running nope");
        assert_eq!(code_of(&err, GUEST_RUNNER_FAILURE), 127);
    }
}
