//! One QMP session on a QEMU monitor socket: the greeting and capabilities
//! negotiation, commands with arguments (events that arrive meanwhile are
//! skipped), and the events themselves for a follower. The control socket's
//! one-shot commands, the snapshot's and restore's migrations and the pause
//! follower all speak through it.

use crate::engine::EngineError;
use serde_json::{Value, json};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long a refused connection is tried again.
const LISTEN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) struct Qmp {
    lines: Lines<BufReader<OwnedReadHalf>>,
    pub(super) w: OwnedWriteHalf,
}

pub(super) fn control(command: &str, message: impl ToString) -> EngineError {
    EngineError::Control {
        command: command.into(),
        message: message.to_string(),
    }
}

impl Qmp {
    pub(super) async fn connect(socket: &Path) -> Result<Qmp, EngineError> {
        // QEMU binds the socket before it listens: a client that came as
        // soon as the file appeared (a restore, on a loaded host) can be
        // refused for a moment.
        let deadline = std::time::Instant::now() + LISTEN_GRACE;
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(source) => {
                    return Err(EngineError::Connect {
                        path: socket.to_owned(),
                        source,
                    });
                }
            }
        };
        let (r, w) = stream.into_split();
        let mut q = Qmp {
            lines: BufReader::new(r).lines(),
            w,
        };
        q.reply("greeting").await?;
        q.execute("qmp_capabilities", Value::Null).await?;
        Ok(q)
    }

    /// The next message, `None` when QEMU closed the socket.
    async fn next(&mut self, command: &str) -> Result<Option<Value>, EngineError> {
        let Some(line) = self.lines.next_line().await? else {
            return Ok(None);
        };
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| control(command, e))
    }

    /// The answer to the command just sent (events are skipped).
    pub(super) async fn reply(&mut self, command: &str) -> Result<Value, EngineError> {
        loop {
            let v = self
                .next(command)
                .await?
                .ok_or_else(|| control(command, "the engine closed its control socket"))?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or_default();
                return Err(control(command, desc));
            }
            return Ok(v.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// The next event's name; `None` when QEMU closed the socket.
    pub(super) async fn next_event(&mut self) -> Result<Option<String>, EngineError> {
        while let Some(v) = self.next("event").await? {
            if let Some(name) = v.get("event").and_then(Value::as_str) {
                return Ok(Some(name.to_string()));
            }
        }
        Ok(None)
    }

    pub(super) fn message(command: &str, args: Value) -> Vec<u8> {
        let mut m = if args.is_null() {
            json!({ "execute": command })
        } else {
            json!({ "execute": command, "arguments": args })
        }
        .to_string();
        m.push('\n');
        m.into_bytes()
    }

    pub(super) async fn execute(
        &mut self,
        command: &str,
        args: Value,
    ) -> Result<Value, EngineError> {
        self.w.write_all(&Self::message(command, args)).await?;
        self.reply(command).await
    }
}
