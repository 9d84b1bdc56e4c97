//! Printing results on stdout: aligned tables, `key: value` blocks and
//! pretty JSON for `--json`. Progress and diagnostics go to stderr and live
//! in `progress.rs`; this module never writes to stderr.

use std::io::Write;

use serde::Serialize;

/// A table of left-aligned columns separated by two spaces. The last column
/// is not padded, so lines carry no trailing spaces.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i + 1 < columns {
                    let pad = widths[i] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print_str(&self.render());
    }
}

/// `key: value` lines with the values aligned.
pub fn render_fields(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(k, v)| format!("{:width$}  {v}\n", format!("{k}:"), width = width + 1))
        .collect()
}

pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print_str(&text);
    Ok(())
}

/// Writes to stdout, ignoring a closed pipe (`banger vm list | head`).
pub fn print_str(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `-` for an absent optional value.
pub fn or_dash(value: Option<impl ToString>) -> String {
    value
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align_without_trailing_spaces() {
        let mut table = Table::new(&["NAME", "STATE", "AGE"]);
        table.row(vec!["web".into(), "running".into(), "5s".into()]);
        table.row(vec!["database-1".into(), "stopped".into(), "3m".into()]);
        assert_eq!(
            table.render(),
            "NAME        STATE    AGE\n\
             web         running  5s\n\
             database-1  stopped  3m\n"
        );
    }

    #[test]
    fn empty_last_cell_leaves_no_trailing_space() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["x".into(), String::new()]);
        assert_eq!(table.render(), "A  B\nx\n");
    }

    #[test]
    fn fields_align_their_values() {
        let text = render_fields(&[("name", "web".into()), ("memory", "512M".into())]);
        assert_eq!(text, "name:    web\nmemory:  512M\n");
    }
}
