//! The agent's log: terse `banger-agent: <msg>` lines on stderr. As PID 1
//! stderr is `/dev/console`, the serial port the host captures to the VM's
//! console log, so lines are few and short. Owns the format and step timing;
//! does not decide what is worth logging.

use std::error::Error;
use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

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
/// Integers only, here and in [`uptime`]: under TCG the first float a
/// guest formats or parses translates all of that code once, which cost
/// the agent's boot milliseconds, and nothing else in it needs floats.
pub struct Millis(pub Duration);

impl Millis {
    /// The time since `start`.
    pub fn since(start: Instant) -> Millis {
        Millis(start.elapsed())
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.as_micros();
        let tenths = (micros + 50) / 100;
        if tenths < 100 {
            write!(f, "{}.{} ms", tenths / 10, tenths % 10)
        } else {
            write!(f, "{} ms", (micros + 500) / 1000)
        }
    }
}

/// The time since the kernel started (`/proc/uptime`).
pub fn uptime() -> Option<Duration> {
    parse_uptime(&std::fs::read_to_string("/proc/uptime").ok()?)
}

/// The first number of `/proc/uptime`'s text (`123.45 67.89`).
pub fn parse_uptime(text: &str) -> Option<Duration> {
    let first = text.split_whitespace().next()?;
    let (secs, fraction) = first.split_once('.').unwrap_or((first, ""));
    let mut nanos = 0u32;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        let digit = char::from(digit).to_digit(10)?;
        nanos += digit * 10u32.pow(8 - i as u32);
    }
    Some(Duration::new(secs.parse().ok()?, nanos))
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
    fn millis_print_a_decimal_below_ten() {
        let ms = |micros| Millis(Duration::from_micros(micros)).to_string();
        assert_eq!(ms(0), "0.0 ms");
        assert_eq!(ms(2_449), "2.4 ms");
        assert_eq!(ms(2_450), "2.5 ms");
        assert_eq!(ms(9_949), "9.9 ms");
        assert_eq!(ms(9_950), "10 ms");
        assert_eq!(ms(26_499), "26 ms");
        assert_eq!(ms(2_390_500), "2391 ms");
    }

    #[test]
    fn uptime_is_read_to_the_nanosecond() {
        let up = |text| parse_uptime(text);
        assert_eq!(up("2.39 0.00\n"), Some(Duration::from_millis(2390)));
        assert_eq!(
            up("12345.678901234567 1.0"),
            Some(Duration::new(12345, 678_901_234))
        );
        assert_eq!(up("7 1"), Some(Duration::from_secs(7)));
        assert_eq!(up("x.5 1"), None);
        assert_eq!(up("1.x5 1"), None);
        assert_eq!(up(""), None);
    }

    #[test]
    fn chain_names_every_cause_once() {
        let e = Outer {
            source: std::io::Error::other("no such device"),
        };
        assert_eq!(chain(&e), "mounting /newroot: no such device");
    }
}
