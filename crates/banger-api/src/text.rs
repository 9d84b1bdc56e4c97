//! Text a guest controls (console lines quoted in errors, `vm logs`, errors
//! the agent reports), made safe to show on a terminal. Both sides apply it:
//! the daemon to what it quotes in messages, the CLI to what it prints.
//!
//! The rule: a character that could move the cursor, change colours, set
//! the window title, talk to the clipboard or reorder what the reader sees
//! is written as a visible escape instead of itself:
//!
//! - C0 controls and DEL as `\xNN` (`\x1b` for ESC), except `\t`, `\r`,
//!   `\n`, shown as `\t`, `\r`, `\n` in one-line text and kept as they are in
//!   multi-line text and on a terminal;
//! - C1 controls (U+0080 to U+009F, which some terminals take as
//!   ESC-sequences) and bidirectional overrides as `\u{9b}`;
//! - bytes that are not UTF-8, in [`TerminalEscaper`], as `\xNN`.
//!
//! Everything else, backslashes included, stays as it is: the escapes are
//! for a reader, not for decoding back.

use std::fmt::Write;

/// Where escaped text goes, which decides what whitespace survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// One line (an error message): every control is escaped.
    Nothing,
    /// Lines (a terminal, a multi-line message): tab, CR and LF stay.
    Whitespace,
}

/// `s` with every control character escaped, newlines too: for quoting
/// guest text inside a one-line message.
pub fn escape_line(s: &str) -> String {
    escape(s, Keep::Nothing)
}

/// `s` with control characters escaped but tabs, carriage returns and
/// newlines kept: for printing a multi-line message on a terminal.
pub fn escape_text(s: &str) -> String {
    escape(s, Keep::Whitespace)
}

fn escape(s: &str, keep: Keep) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        push_char(&mut out, c, keep);
    }
    out
}

fn push_char(out: &mut String, c: char, keep: Keep) {
    match c {
        '\t' | '\r' | '\n' if keep == Keep::Whitespace => out.push(c),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        '\n' => out.push_str("\\n"),
        '\0'..='\x1f' | '\x7f' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if is_unsafe_unicode(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// C1 controls, and the characters that reorder text for display (the
/// "Trojan Source" set).
fn is_unsafe_unicode(c: char) -> bool {
    matches!(c,
        '\u{80}'..='\u{9f}'
        | '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// Escapes a byte stream for a terminal, chunk by chunk (a UTF-8 sequence
/// split across chunks is held back until its end arrives): tabs, carriage
/// returns and newlines pass, other controls and invalid bytes are escaped.
#[derive(Debug, Default)]
pub struct TerminalEscaper {
    /// The start of a UTF-8 sequence whose end is in the next chunk.
    pending: Vec<u8>,
}

impl TerminalEscaper {
    pub fn new() -> TerminalEscaper {
        TerminalEscaper::default()
    }

    /// The escaped form of `chunk` (and of what the last one held back).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(chunk);
        let mut out = String::with_capacity(input.len());
        let mut rest = &input[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    out.push_str(&escape(valid, Keep::Whitespace));
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    let valid = std::str::from_utf8(valid).expect("checked by from_utf8");
                    out.push_str(&escape(valid, Keep::Whitespace));
                    match e.error_len() {
                        Some(bad) => {
                            for b in &after[..bad] {
                                let _ = write!(out, "\\x{b:02x}");
                            }
                            rest = &after[bad..];
                        }
                        // A sequence cut short by the chunk's end: wait for more.
                        None => {
                            self.pending = after.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out.into_bytes()
    }

    /// What is still held back at the end of the stream, escaped.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = String::new();
        for b in std::mem::take(&mut self.pending) {
            let _ = write!(out, "\\x{b:02x}");
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_shows_every_control_as_an_escape() {
        assert_eq!(
            escape_line("boot\x1b]0;pwned\x07 ok\r\nnext\tcol\x7f"),
            "boot\\x1b]0;pwned\\x07 ok\\r\\nnext\\tcol\\x7f"
        );
    }

    #[test]
    fn text_keeps_its_lines_and_tabs() {
        assert_eq!(
            escape_text("a\tb\r\n\x1b[2Jc\u{9b}31m\u{202e}d"),
            "a\tb\r\n\\x1b[2Jc\\u{9b}31m\\u{202e}d"
        );
    }

    #[test]
    fn plain_text_and_other_unicode_pass_unchanged() {
        let s = "Linux 6.1 — démarrage \\ ok ✓";
        assert_eq!(escape_line(s), s);
    }

    #[test]
    fn a_terminal_stream_escapes_bad_bytes_and_joins_split_characters() {
        let mut e = TerminalEscaper::new();
        let mut out = e.push(b"ok\n\x1b[31mred \xff ");
        // "é" is C3 A9: split across two chunks.
        out.extend(e.push(b"caf\xc3"));
        out.extend(e.push(b"\xa9\r\n\xe2\x82"));
        out.extend(e.finish());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ok\n\\x1b[31mred \\xff café\r\n\\xe2\\x82"
        );
    }
}
