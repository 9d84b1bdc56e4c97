//! Medians, wall-clock timing and the printed table: every figure a median
//! of several runs, printed beside its ratio to the floor (a0) measured in
//! the same run.

use std::time::Instant;

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// How long `f` took, in ms.
pub fn timed(f: impl FnOnce()) -> f64 {
    let t0 = Instant::now();
    f();
    t0.elapsed().as_secs_f64() * 1000.0
}

/// One printed line.
enum Row {
    /// A median in ms, printed with its ratio to (a0).
    Ms(String, f64),
    /// A median in MB (PSS).
    Mb(String, f64),
    /// A plain ratio or rate.
    Value(String, f64, usize),
    /// A figure that could not be taken, and why.
    Skipped(String, String),
    /// A section heading.
    Heading(String),
}

/// The table the bench prints at the end, in the order rows were added.
pub struct Report {
    /// The floor (a0), ms.
    floor: f64,
    rows: Vec<Row>,
}

impl Report {
    pub fn new(floor: f64) -> Report {
        Report {
            floor,
            rows: Vec::new(),
        }
    }

    /// The median of `samples` (ms), with its ratio to (a0); returns it.
    pub fn ms(&mut self, label: impl Into<String>, samples: Vec<f64>) -> f64 {
        let m = median(samples);
        self.rows.push(Row::Ms(label.into(), m));
        m
    }

    /// The median of `samples` (MB).
    pub fn mb(&mut self, label: impl Into<String>, samples: Vec<f64>) -> f64 {
        let m = median(samples);
        self.rows.push(Row::Mb(label.into(), m));
        m
    }

    pub fn ratio(&mut self, label: impl Into<String>, value: f64) {
        self.rows.push(Row::Value(label.into(), value, 2));
    }

    pub fn rate(&mut self, label: impl Into<String>, value: f64) {
        self.rows.push(Row::Value(label.into(), value, 1));
    }

    pub fn skipped(&mut self, label: impl Into<String>, why: impl Into<String>) {
        self.rows.push(Row::Skipped(label.into(), why.into()));
    }

    pub fn heading(&mut self, label: impl Into<String>) {
        self.rows.push(Row::Heading(label.into()));
    }

    pub fn print(&self) {
        println!("{:<56} {:>9} {:>7}", "measurement", "median", "/(a0)");
        for row in &self.rows {
            match row {
                Row::Ms(l, m) => println!("{l:<56} {m:>6.0} ms {:>7.3}", m / self.floor),
                Row::Mb(l, m) => println!("{l:<56} {m:>6.0} MB"),
                Row::Value(l, v, digits) => println!("{l:<56} {v:>9.digits$}"),
                Row::Skipped(l, why) => println!("{l:<56} skipped: {why}"),
                Row::Heading(l) => println!("-- {l}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(median(vec![]).is_nan());
    }
}
