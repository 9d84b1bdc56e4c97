//! Running a command in the guest to completion and collecting what it
//! printed (the daemon's own uses: git in the guest for identity and
//! export). Output is bounded: past the limit the command fails rather
//! than fill the host's memory.

use super::{AgentConn, AgentError};
use banger_proto::{ExecRequest, FrameKind, Request};

/// What a guest command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl RunOutput {
    /// The last lines of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(4)..].join(" | ")
    }
}

impl AgentConn {
    /// Runs `argv` in `cwd` with `stdin` fed and closed; collects at most
    /// `limit` bytes of stdout (stderr is capped at 64 KiB).
    pub async fn run(
        &self,
        argv: &[&str],
        cwd: Option<&str>,
        stdin: &[u8],
        limit: usize,
    ) -> Result<RunOutput, AgentError> {
        let mut s = self
            .request(Request::Exec(ExecRequest {
                argv: argv.iter().map(|a| a.to_string()).collect(),
                cwd: cwd.map(Into::into),
                ..Default::default()
            }))
            .await?;
        for chunk in stdin.chunks(banger_proto::MAX_FRAME) {
            banger_proto::write_frame(&mut s, &banger_proto::Frame::new(FrameKind::Stdin, chunk))
                .await?;
        }
        banger_proto::write_frame(&mut s, &banger_proto::Frame::new(FrameKind::StdinEof, []))
            .await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            let frame = banger_proto::read_frame(&mut s)
                .await?
                .ok_or(AgentError::Closed)?;
            match frame.kind {
                FrameKind::Started => {}
                FrameKind::Stdout => {
                    if stdout.len() + frame.payload.len() > limit {
                        return Err(AgentError::TooMuchOutput { limit });
                    }
                    stdout.extend_from_slice(&frame.payload);
                }
                FrameKind::Stderr => {
                    let room = (64usize << 10).saturating_sub(stderr.len());
                    stderr.extend_from_slice(&frame.payload[..frame.payload.len().min(room)]);
                }
                FrameKind::Exit => {
                    let st: banger_proto::ExitStatus = frame.parse()?;
                    return Ok(RunOutput {
                        code: st.code,
                        stdout,
                        stderr,
                    });
                }
                FrameKind::Error => {
                    let e: banger_proto::ErrorBody = frame.parse()?;
                    return Err(AgentError::Remote {
                        code: e.code,
                        message: e.message,
                    });
                }
                other => return Err(AgentError::Unexpected(other)),
            }
        }
    }
}
