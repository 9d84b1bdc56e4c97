//! Streaming answers: an operation's events as server-sent events (replayed
//! from the start, so a late subscriber sees every stage), and a VM's
//! console log, optionally followed as it grows.

use crate::api::{AppState, HttpError, LogsQuery};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use banger_api::OperationEvent;
use banger_core::ops::Watch;
use futures::StreamExt;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
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

pub async fn vm_logs(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: LogsQuery,
) -> Result<Response, HttpError> {
    let path = s.vms.console_log(&name)?;
    let headers = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !q.follow {
        let text = std::fs::read(&path).unwrap_or_default();
        return Ok((headers, text).into_response());
    }
    // Follow: send what is there, then poll for growth until the client goes away.
    let stream = futures::stream::unfold((path, 0u64), |(path, pos)| async move {
        loop {
            let chunk = read_from(&path, pos);
            if !chunk.is_empty() {
                let next = pos + chunk.len() as u64;
                return Some((Ok::<_, Infallible>(chunk), (path, next)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .boxed();
    Ok((headers, Body::from_stream(stream)).into_response())
}

fn read_from(path: &std::path::Path, pos: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(pos)).is_ok()
    {
        let _ = f.by_ref().take(1 << 20).read_to_end(&mut buf);
    }
    buf
}
