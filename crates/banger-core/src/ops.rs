//! Operations with stages: every long action (create, start, stop, delete,
//! image build) runs as an [`Op`] whose stages are timed, logged, kept as
//! events for late subscribers (the CLI's progress view, the web page) and
//! saved to the store when the operation ends. [`Operations`] is the
//! service that begins them and answers for them, live or finished.

use crate::error::Error;
use crate::store::Store;
use banger_api::{ApiError, Operation, OperationEvent, OperationKind, OperationState, Stage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

pub struct Op {
    started: Instant,
    inner: Mutex<OpInner>,
    changed: watch::Sender<usize>,
    /// Stops the programs a cancellable operation runs ([`Operations::cancel`]).
    cancel: banger_sys::cancel::Cancel,
    /// Set with `cancel`, for what the operation awaits (a lock).
    cancelled: watch::Sender<bool>,
}

struct OpInner {
    record: Operation,
    events: Vec<OperationEvent>,
    done: bool,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op").field("id", &self.id()).finish()
    }
}

impl Op {
    pub fn id(&self) -> String {
        self.lock().record.id.clone()
    }

    pub fn target(&self) -> String {
        self.lock().record.target.clone()
    }

    /// What stops this operation's programs when it is cancelled: its
    /// runner goes through [`banger_sys::command::cancellable`] with it.
    pub fn canceller(&self) -> &banger_sys::cancel::Cancel {
        &self.cancel
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Cancels it: no program of its starts any more, the running one is
    /// stopped, and [`Op::until_cancelled`] resolves. Whether it may be is
    /// the caller's to decide ([`Operations::cancel`] for the API).
    pub fn cancel(&self) {
        self.cancel.cancel();
        self.cancelled.send_replace(true);
    }

    /// Resolves once the operation has been cancelled.
    pub async fn until_cancelled(&self) {
        let _ = self.cancelled.subscribe().wait_for(|c| *c).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, event: OperationEvent) {
        self.append(event, false);
    }

    /// Appends `event`, marking the operation done in the same step when
    /// `done`: a follower that saw `done` before its event was there
    /// ended its stream without it (and its client asked for the record
    /// again).
    fn append(&self, event: OperationEvent, done: bool) {
        let n = {
            let mut inner = self.lock();
            inner.events.push(event);
            inner.done |= done;
            inner.events.len()
        };
        self.changed.send_replace(n);
    }

    /// Runs `fut` as stage `name`, recording its duration and outcome.
    pub async fn stage<T, E: std::error::Error + 'static>(
        &self,
        name: &str,
        label: &str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let t0 = self.begin_stage(name, label);
        let out = fut.await;
        let error = out.as_ref().err().map(|e| crate::error::chain(e));
        self.end_stage(name, t0, error, None);
        out
    }

    /// Marks stage `name` as started; pair with [`Op::end_stage`]. For
    /// stages driven from blocking code.
    pub fn begin_stage(&self, name: &str, label: &str) -> Instant {
        let kind = self.lock().record.kind;
        crate::fault::point(kind, name, false);
        self.lock().record.stages.push(Stage {
            name: name.into(),
            label: label.into(),
            state: OperationState::Running,
            duration_ms: None,
            detail: None,
        });
        self.push(OperationEvent::StageStarted {
            name: name.into(),
            label: label.into(),
        });
        Instant::now()
    }

    /// Marks stage `name` as finished (or failed with `error`).
    pub fn end_stage(
        &self,
        name: &str,
        started: Instant,
        error: Option<String>,
        detail: Option<String>,
    ) {
        let ms = started.elapsed().as_millis() as u64;
        let target = self.target();
        let kind = self.lock().record.kind;
        let point = crate::fault::name(kind, name, false);
        if error.is_none() {
            crate::fault::point(kind, name, true);
        }
        {
            let mut inner = self.lock();
            if let Some(st) = inner
                .record
                .stages
                .iter_mut()
                .rev()
                .find(|s| s.name == name)
            {
                st.duration_ms = Some(ms);
                st.state = if error.is_none() {
                    OperationState::Succeeded
                } else {
                    OperationState::Failed
                };
                st.detail = detail.clone();
            }
        }
        match error {
            None => {
                tracing::info!(target = %target, stage = name, %point, ms, "stage done");
                self.push(OperationEvent::StageFinished {
                    name: name.into(),
                    duration_ms: ms,
                    detail,
                });
            }
            Some(error) => {
                tracing::warn!(target = %target, stage = name, %point, ms, %error, "stage failed");
                self.push(OperationEvent::StageFailed {
                    name: name.into(),
                    duration_ms: ms,
                    error,
                });
            }
        }
    }

    /// A progress message inside the running stage.
    pub fn progress(&self, name: &str, message: String) {
        self.push(OperationEvent::Progress {
            name: name.into(),
            message,
        });
    }

    /// Ends the operation, saves it and tells subscribers.
    fn finish(&self, store: &Store, result: Result<(), ApiError>) -> Operation {
        let record = {
            let mut inner = self.lock();
            inner.record.duration_ms = Some(self.started.elapsed().as_millis() as u64);
            match result {
                Ok(()) => inner.record.state = OperationState::Succeeded,
                Err(e) => {
                    inner.record.state = OperationState::Failed;
                    inner.record.error = Some(e);
                }
            }
            inner.record.clone()
        };
        if let Err(e) = store.save_operation(&record) {
            tracing::error!(op = %record.id, error = %e, "cannot save operation record");
        }
        tracing::info!(op = %record.id, kind = ?record.kind, target = %record.target, state = ?record.state,
            ms = record.duration_ms, "operation finished");
        self.append(
            OperationEvent::Done {
                operation: record.clone(),
            },
            true,
        );
        record
    }

    pub fn snapshot(&self) -> Operation {
        self.lock().record.clone()
    }

    /// Events from index `from` on, and whether the operation is done.
    pub fn events_from(&self, from: usize) -> (Vec<OperationEvent>, bool) {
        let inner = self.lock();
        (
            inner
                .events
                .get(from..)
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
            inner.done,
        )
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }

    /// Waits for the end and returns the final record.
    pub async fn wait(&self) -> Operation {
        let mut rx = self.subscribe();
        loop {
            if self.lock().done {
                return self.snapshot();
            }
            if rx.changed().await.is_err() {
                return self.snapshot();
            }
        }
    }
}

/// An operation to follow: still running here, or finished (perhaps
/// before this daemon started).
pub enum Watch {
    Live(Arc<Op>),
    Done(Operation),
}

/// The operations service: begins operations, finishes them into the
/// store, and finds them again (this daemon's live ones in memory, a
/// bounded number of finished ones too, older ones in the store).
/// The refusal to cancel an operation that has ended.
fn finished(id: &str, op: &Operation) -> Error {
    Error::Refused {
        what: format!("operation {id} has finished ({:?})", op.state).to_lowercase(),
        hint: "there is nothing left to cancel".into(),
    }
}

pub struct Operations {
    store: Arc<Store>,
    ops: Mutex<HashMap<String, Arc<Op>>>,
}

impl Operations {
    pub fn new(store: Arc<Store>) -> Operations {
        Operations {
            store,
            ops: Mutex::new(HashMap::new()),
        }
    }

    pub fn begin(&self, kind: OperationKind, target: &str) -> Arc<Op> {
        let id = format!("op-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let (changed, _) = watch::channel(0);
        let op = Arc::new(Op {
            started: Instant::now(),
            inner: Mutex::new(OpInner {
                record: Operation {
                    id: id.clone(),
                    kind,
                    target: target.into(),
                    state: OperationState::Running,
                    stages: Vec::new(),
                    error: None,
                    started_at: banger_sys::clock::unix_now(),
                    duration_ms: None,
                },
                events: Vec::new(),
                done: false,
            }),
            changed,
            cancel: Default::default(),
            cancelled: watch::channel(false).0,
        });
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        // Keep memory bounded: forget finished operations beyond a few hundred.
        if ops.len() > 512 {
            ops.retain(|_, o| !o.lock().done);
        }
        ops.insert(id, op.clone());
        op
    }

    /// Ends `op` with `result`, records it, and tells its followers.
    pub fn finish(&self, op: &Op, result: Result<(), Error>) -> Operation {
        if let Err(e) = &result {
            tracing::warn!(op = %op.id(), error = %crate::error::chain(e), "operation failed");
        }
        op.finish(&self.store, result.map_err(|e| e.to_api()))
    }

    /// Runs `work` as the body of a new operation in the background.
    pub fn spawn<F>(
        self: &Arc<Self>,
        kind: OperationKind,
        target: &str,
        work: impl FnOnce(Arc<Op>) -> F,
    ) -> Arc<Op>
    where
        F: std::future::Future<Output = Result<(), Error>> + Send + 'static,
    {
        let op = self.begin(kind, target);
        let fut = work(op.clone());
        let (this, op2) = (self.clone(), op.clone());
        tokio::spawn(async move {
            // Its own task, so that a panic in the work still ends the
            // operation (as failed) and nobody waits for it forever.
            let result = match tokio::spawn(fut).await {
                Ok(result) => result,
                Err(source) => Err(Error::Task {
                    task: "operation",
                    source,
                }),
            };
            this.finish(&op2, result);
        });
        op
    }

    fn live(&self, id: &str) -> Option<Arc<Op>> {
        self.ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Cancels a running image build or register: no program starts any
    /// more, the running one is stopped, and the operation ends failed
    /// (`cancelled`) once its undo has run. Other kinds refuse: a create,
    /// a delete or a snapshot runs to its end.
    pub fn cancel(&self, id: &str) -> Result<Operation, Error> {
        let op = match self.watch(id)? {
            Watch::Live(op) if !op.lock().done => op,
            Watch::Live(op) => return Err(finished(id, &op.snapshot())),
            Watch::Done(rec) => return Err(finished(id, &rec)),
        };
        let kind = op.lock().record.kind;
        if !matches!(
            kind,
            OperationKind::ImageBuild | OperationKind::ImageRegister
        ) {
            return Err(Error::Refused {
                what: format!(
                    "operation {id} is not an image build or register: it runs to its end"
                ),
                hint: "only image builds and registers can be cancelled".into(),
            });
        }
        if !op.cancelled() {
            tracing::info!(op = %id, target = %op.target(), "cancelling the operation");
            op.cancel();
        }
        Ok(op.snapshot())
    }

    /// The operation's record as it stands.
    pub fn get(&self, id: &str) -> Result<Operation, Error> {
        match self.watch(id)? {
            Watch::Live(op) => Ok(op.snapshot()),
            Watch::Done(rec) => Ok(rec),
        }
    }

    /// The `limit` operations begun last, newest first: those still
    /// running as they stand, the rest as recorded.
    pub fn recent(&self, limit: usize) -> Result<Vec<Operation>, Error> {
        let running: Vec<Operation> = self
            .ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|o| !o.lock().done)
            .map(|o| o.snapshot())
            .collect();
        let mut all = self.store.recent_operations(limit)?;
        all.retain(|o| !running.iter().any(|r| r.id == o.id));
        all.extend(running);
        all.sort_by_key(|o| std::cmp::Reverse(o.started_at));
        all.truncate(limit);
        Ok(all)
    }

    pub fn watch(&self, id: &str) -> Result<Watch, Error> {
        if let Some(op) = self.live(id) {
            return Ok(Watch::Live(op));
        }
        self.store
            .operation(id)?
            .map(Watch::Done)
            .ok_or_else(|| Error::OperationNotFound { id: id.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_image_build_or_register_can_be_cancelled() {
        let reg = Operations::new(Arc::new(Store::open_in_memory().unwrap()));
        let build = reg.begin(OperationKind::ImageBuild, "debian");
        let runner = banger_sys::command::cancellable(
            Arc::new(banger_sys::command::SystemRunner),
            build.canceller(),
        );
        assert!(runner.run(&banger_sys::command::Cmd::new("true")).is_ok());
        let rec = reg.cancel(&build.id()).unwrap();
        assert_eq!(
            rec.state,
            OperationState::Running,
            "it ends once its undo ran"
        );
        assert!(build.cancelled());
        assert!(
            runner.run(&banger_sys::command::Cmd::new("true")).is_err(),
            "its runner starts nothing more"
        );
        reg.cancel(&build.id())
            .expect("cancelling twice is no error");
        let create = reg.begin(OperationKind::Create, "web");
        let err = reg.cancel(&create.id()).unwrap_err();
        assert!(err.to_string().contains("runs to its end"), "{err}");
        assert!(!create.cancelled());
        let register = reg.begin(OperationKind::ImageRegister, "mine");
        reg.finish(&register, Ok(()));
        let err = reg.cancel(&register.id()).unwrap_err();
        assert!(err.to_string().contains("has finished"), "{err}");
        assert!(matches!(
            reg.cancel("op-nope"),
            Err(Error::OperationNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn recent_lists_running_operations_with_finished_ones() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let reg = Operations::new(store);
        let done = reg.begin(OperationKind::Stop, "a");
        reg.finish(&done, Ok(()));
        let running = reg.begin(OperationKind::Create, "b");
        running.begin_stage("engine", "start engine");
        let recent = reg.recent(10).unwrap();
        assert_eq!(recent.len(), 2, "{recent:?}");
        let live = recent.iter().find(|o| o.id == running.id()).unwrap();
        assert_eq!(live.state, OperationState::Running);
        assert_eq!(live.stages.last().unwrap().label, "start engine");
        let finished = recent.iter().find(|o| o.id == done.id()).unwrap();
        assert_eq!(finished.state, OperationState::Succeeded);
        assert_eq!(reg.recent(1).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn stages_are_timed_recorded_and_replayed() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let reg = Operations::new(store.clone());
        let op = reg.begin(OperationKind::Create, "web");
        op.stage("disks", "prepare disks", async { Ok::<_, Error>(()) })
            .await
            .unwrap();
        let err = op
            .stage("boot", "boot", async {
                Err::<(), _>(Error::Guest("no kernel".into()))
            })
            .await;
        assert!(err.is_err());
        let rec = reg.finish(&op, err);
        assert_eq!(rec.state, OperationState::Failed);
        assert_eq!(
            rec.stages
                .iter()
                .map(|s| (s.name.as_str(), s.state))
                .collect::<Vec<_>>(),
            vec![
                ("disks", OperationState::Succeeded),
                ("boot", OperationState::Failed)
            ]
        );
        let Watch::Live(live) = reg.watch(&op.id()).unwrap() else {
            panic!("a finished operation of this daemon is still live")
        };
        let (events, done) = live.events_from(0);
        assert!(done);
        assert!(matches!(events.last(), Some(OperationEvent::Done { .. })));
        assert_eq!(events.len(), 5);
        assert_eq!(
            store.operation(&op.id()).unwrap().unwrap().state,
            OperationState::Failed
        );
        assert_eq!(op.wait().await.state, OperationState::Failed);
        assert_eq!(rec.error.unwrap().code, banger_api::ErrorCode::Engine);
    }

    #[test]
    fn a_follower_that_sees_done_has_the_done_event() {
        let reg = Arc::new(Operations::new(Arc::new(Store::open_in_memory().unwrap())));
        for _ in 0..50 {
            let op = reg.begin(OperationKind::Delete, "web");
            let watching = Arc::new(std::sync::Barrier::new(2));
            let watcher = {
                let (op, watching) = (op.clone(), watching.clone());
                std::thread::spawn(move || {
                    watching.wait();
                    loop {
                        let (events, done) = op.events_from(0);
                        if done {
                            return matches!(events.last(), Some(OperationEvent::Done { .. }));
                        }
                    }
                })
            };
            watching.wait();
            reg.finish(&op, Ok(()));
            assert!(
                watcher.join().unwrap(),
                "done was seen before the done event"
            );
        }
    }

    #[tokio::test]
    async fn an_operation_whose_work_panics_ends_failed_instead_of_never() {
        let reg = Arc::new(Operations::new(Arc::new(Store::open_in_memory().unwrap())));
        let op = reg.spawn(OperationKind::Stop, "web", |_| async {
            if true {
                panic!("a bug");
            }
            Ok(())
        });
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), op.wait())
            .await
            .expect("the operation ends");
        assert_eq!(done.state, OperationState::Failed);
        assert!(
            done.error
                .unwrap()
                .message
                .contains("operation task failed")
        );
    }

    #[test]
    fn unknown_operations_are_not_found() {
        let reg = Operations::new(Arc::new(Store::open_in_memory().unwrap()));
        let err = reg.get("op-nope").unwrap_err();
        assert_eq!(err.code(), banger_api::ErrorCode::NotFound);
    }
}
