//! Incremental parser for server-sent events, the format of an operation's
//! `/events` stream. Owns only the line protocol (chunks in, `data` payloads
//! out); reading the HTTP body and decoding the JSON is `client.rs`'s job.
//!
//! Written by hand because the subset we need is a dozen lines: `data:`
//! lines accumulate (joined by `\n`), a blank line dispatches the event,
//! lines starting with `:` are comments, other fields (`event:`, `id:`,
//! `retry:`) are ignored. Lines end in `\n` or `\r\n`; chunks may split
//! lines anywhere.

#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet terminated.
    partial: Vec<u8>,
    /// `data` lines of the event being read.
    data: Option<String>,
}

impl SseParser {
    /// Feeds a chunk; returns the payloads of the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line(&String::from_utf8_lossy(&line), &mut events);
        }
        self.partial.extend_from_slice(rest);
        events
    }

    fn line(&mut self, line: &str, events: &mut Vec<String>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                events.push(data);
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_come_out_whole() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"da").is_empty());
        assert!(parser.push(b"ta: {\"a\":").is_empty());
        assert!(parser.push(b"1}\n").is_empty());
        assert_eq!(parser.push(b"\ndata: 2\n\nda"), vec!["{\"a\":1}", "2"]);
        assert_eq!(parser.push(b"ta: 3\n\n"), vec!["3"]);
    }

    #[test]
    fn multi_line_data_joins_with_newlines() {
        let mut parser = SseParser::default();
        assert_eq!(parser.push(b"data: one\ndata:two\n\n"), vec!["one\ntwo"]);
    }

    #[test]
    fn crlf_comments_and_other_fields_are_handled() {
        let mut parser = SseParser::default();
        let events = parser.push(b": keep-alive\r\n\r\nevent: x\r\nid: 4\r\ndata: ok\r\n\r\n");
        assert_eq!(events, vec!["ok"]);
    }

    #[test]
    fn blank_lines_without_data_dispatch_nothing() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"\n\n\n").is_empty());
    }
}
