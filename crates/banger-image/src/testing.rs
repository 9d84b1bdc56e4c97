//! Test doubles shared by this crate's unit tests: a [`Runner`] that answers
//! from a closure and records what it was asked to run.

use std::sync::Mutex;

use banger_sys::command::{Cmd, CommandError, Output, Runner};

type Handler = dyn Fn(&Cmd) -> Result<Output, CommandError> + Send + Sync;

pub struct FakeRunner {
    handler: Box<Handler>,
    calls: Mutex<Vec<String>>,
}

impl FakeRunner {
    pub fn new(
        handler: impl Fn(&Cmd) -> Result<Output, CommandError> + Send + Sync + 'static,
    ) -> FakeRunner {
        FakeRunner {
            handler: Box::new(handler),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Every command run so far, rendered as by `Cmd`'s `Display`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Runner for FakeRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, CommandError> {
        self.calls.lock().unwrap().push(cmd.to_string());
        (self.handler)(cmd)
    }
}

/// An [`Output`] with `stdout`.
pub fn stdout(text: &str) -> Output {
    Output {
        stdout: text.as_bytes().to_vec(),
        stderr: Vec::new(),
    }
}
