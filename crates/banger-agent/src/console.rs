//! The agent's log: terse `banger-agent: <msg>` lines on stderr. As PID 1
//! stderr is `/dev/console`, the serial port the host captures to the VM's
//! console log, so lines are few and short. Owns the format and step timing;
//! does not decide what is worth logging.

use std::error::Error;
use std::fmt;
use std::io::Write;
use std::time::Instant;

/// Writes one log line.
pub fn log(msg: fmt::Arguments<'_>) {
    // One write per line, so lines from the reaper thread never interleave.
    let line = format!("banger-agent: {msg}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Runs one boot step and logs it with its duration, or its error chain.
pub fn step<T, E: Error>(what: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let start = Instant::now();
    let result = f();
    let took = Millis::since(start);
    match &result {
        Ok(_) => log(format_args!("{what} ({took})")),
        Err(e) => log(format_args!("{what} failed: {} ({took})", chain(e))),
    }
    result
}

/// An error and all its sources, joined with `: `.
pub fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A duration in milliseconds, printed with one decimal below 10 ms.
pub struct Millis(pub f64);

impl Millis {
    /// The time since `start`.
    pub fn since(start: Instant) -> Millis {
        Millis(start.elapsed().as_secs_f64() * 1000.0)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 10.0 {
            write!(f, "{:.1} ms", self.0)
        } else {
            write!(f, "{:.0} ms", self.0)
        }
    }
}

/// Milliseconds since the kernel started (`/proc/uptime`).
pub fn uptime_ms() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(secs * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("mounting /newroot")]
    struct Outer {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn chain_names_every_cause_once() {
        let e = Outer {
            source: std::io::Error::other("no such device"),
        };
        assert_eq!(chain(&e), "mounting /newroot: no such device");
    }
}
