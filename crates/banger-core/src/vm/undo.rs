//! The undo stack of a lifecycle operation: each step that made something
//! pushes how to unmake it; on failure the stack runs in reverse, so
//! exactly what was done is undone; on success it is dropped unrun.

use futures::future::BoxFuture;

type Step<'a> = Box<dyn FnOnce() -> BoxFuture<'a, ()> + Send + 'a>;

#[derive(Default)]
pub struct Undo<'a> {
    steps: Vec<(String, Step<'a>)>,
}

impl<'a> Undo<'a> {
    pub fn new() -> Undo<'a> {
        Undo { steps: Vec::new() }
    }

    /// Pushes an undo step that needs to await.
    pub fn push_async(
        &mut self,
        label: impl Into<String>,
        step: impl FnOnce() -> BoxFuture<'a, ()> + Send + 'a,
    ) {
        self.steps.push((label.into(), Box::new(step)));
    }

    /// Pushes a blocking-free undo step.
    pub fn push(&mut self, label: impl Into<String>, step: impl FnOnce() + Send + 'a) {
        self.push_async(label, move || {
            step();
            Box::pin(async {})
        });
    }

    /// The labels of the steps it would run, in the order it would run them.
    pub fn pending(&self) -> Vec<&str> {
        self.steps.iter().rev().map(|(l, _)| l.as_str()).collect()
    }

    /// Keeps what was made when `result` is a success; undoes it otherwise,
    /// logging why (`what` names the operation and its target).
    pub async fn settle<T, E: std::error::Error + 'static>(
        self,
        result: &Result<T, E>,
        what: &str,
    ) {
        if let Err(e) = result {
            tracing::warn!(error = %crate::error::chain(e), "{what} failed; undoing");
            self.unwind().await;
        }
    }

    /// Runs every step, last pushed first.
    pub async fn unwind(self) {
        for (label, step) in self.steps.into_iter().rev() {
            tracing::debug!(undo = %label, "undoing");
            step().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn steps_run_in_reverse_and_only_on_unwind() {
        let log = Mutex::new(Vec::new());
        let mut undo = Undo::new();
        undo.push("a", || log.lock().unwrap().push("a"));
        undo.push("b", || log.lock().unwrap().push("b"));
        assert_eq!(undo.pending(), vec!["b", "a"]);
        undo.unwind().await;
        assert_eq!(*log.lock().unwrap(), vec!["b", "a"]);
        let mut kept = Undo::new();
        kept.push("c", || log.lock().unwrap().push("c"));
        drop(kept);
        assert_eq!(log.lock().unwrap().len(), 2);
    }
}
