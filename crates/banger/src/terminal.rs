//! The local terminal: whether stdio are terminals, its size, and raw mode
//! for `-t` sessions (restored when the guard drops, on every exit path
//! that unwinds or returns).

use std::io::IsTerminal;

use banger_proto::Resize;
use rustix::termios::{OptionalActions, Termios, tcgetattr, tcgetwinsize, tcsetattr};

pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// The terminal's size, from stdout or else stdin.
pub fn size() -> Option<Resize> {
    let ws = tcgetwinsize(std::io::stdout())
        .or_else(|_| tcgetwinsize(std::io::stdin()))
        .ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some(Resize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Stdin in raw mode until dropped: keys (Ctrl-C included) go to the guest
/// as bytes, and the guest's pseudo-terminal does the line discipline. (An
/// exec session still notices Ctrl-C, to leave a guest that stops
/// answering: see `commands/exec.rs`.)
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enable() -> std::io::Result<RawMode> {
        let saved = tcgetattr(std::io::stdin())?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(std::io::stdin(), OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}
