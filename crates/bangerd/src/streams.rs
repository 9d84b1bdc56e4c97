//! Streaming answers: an operation's events as server-sent events (replayed
//! from the start, so a late subscriber sees every stage), and a VM's
//! console log in bounded chunks, optionally followed as it grows.

use crate::api::{AppState, HttpError, LogsQuery};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use banger_api::OperationEvent;
use banger_core::console::Snapshot;
use banger_core::ops::Watch;
use futures::StreamExt;
use std::convert::Infallible;
use std::time::Duration;

fn sse_line(ev: &OperationEvent) -> String {
    format!(
        "data: {}\n\n",
        serde_json::to_string(ev).expect("events serialize")
    )
}

pub async fn operation_events(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    let op = match s.ops.watch(&id)? {
        Watch::Live(op) => op,
        // Finished before this daemon started: replay just the outcome.
        Watch::Done(rec) => {
            return Ok(
                (headers, sse_line(&OperationEvent::Done { operation: rec })).into_response(),
            );
        }
    };
    let rx = op.subscribe();
    let stream = futures::stream::unfold(
        (op, rx, 0usize, false),
        |(op, mut rx, from, finished)| async move {
            if finished {
                return None;
            }
            loop {
                let (events, done) = op.events_from(from);
                if !events.is_empty() {
                    let text: String = events.iter().map(sse_line).collect();
                    let next = from + events.len();
                    return Some((Ok::<_, Infallible>(text), (op, rx, next, done)));
                }
                if done || rx.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// The console log: both segments as they are now (see
/// `banger_core::console`), then, when following, what the guest appends,
/// polled until the client goes away. Read in bounded chunks as the client
/// takes them, never a whole file: a guest decides how large its console
/// gets. The bytes are the guest's, unescaped; the CLI escapes them for a
/// terminal.
pub async fn vm_logs(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: LogsQuery,
) -> Result<Response, HttpError> {
    let path = s.vms.console_log(&name)?;
    let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    let snapshot = Snapshot::new(&path);
    let follower = q.follow.then(|| snapshot.follow());
    let stream = futures::stream::unfold(
        (Some(snapshot), follower),
        |(mut snapshot, mut follower)| async move {
            if let Some(mut snap) = snapshot.take() {
                let (chunk, snap) = blocking(move || (snap.next_chunk(), snap)).await?;
                if let Some(chunk) = chunk {
                    return Some((Ok::<_, Infallible>(chunk), (Some(snap), follower)));
                }
            }
            let mut f = follower.take()?;
            loop {
                let (chunk, back) = blocking(move || (f.next_chunk(), f)).await?;
                f = back;
                if !chunk.is_empty() {
                    return Some((Ok(chunk), (None, Some(f))));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    )
    .boxed();
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// Runs a file read off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}
