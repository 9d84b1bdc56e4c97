//! Sizes and ages for people: what the CLI's tables and the web page show
//! (the API itself speaks MiB, bytes and unix seconds).

/// `512` → `512M`, `2048` → `2G`, `1536` → `1536M`.
pub fn format_mib(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{}G", mib / 1024)
    } else {
        format!("{mib}M")
    }
}

/// Bytes as a short size: `900B`, `12K`, `34M`, `1.2G`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 10.0 {
        format!("{}{}", value.round() as u64, UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// Age of something created at `created_at` (unix seconds), seen at `now`:
/// the largest whole unit, `5s`, `3m`, `2h`, `4d`. Clock skew reads as `0s`.
pub fn format_age(now: i64, created_at: i64) -> String {
    let secs = (now - created_at).max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Durations of stages and operations: `123 ms`, `2.6 s`, `1m 05s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        let secs = ms / 1000;
        format!("{}m {:02}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mib_and_bytes_format_short() {
        assert_eq!(format_mib(512), "512M");
        assert_eq!(format_mib(2048), "2G");
        assert_eq!(format_mib(1536), "1536M");
        assert_eq!(format_bytes(900), "900B");
        assert_eq!(format_bytes(5 * 1024 * 1024), "5.0M");
        assert_eq!(format_bytes(34 * 1024 * 1024), "34M");
        assert_eq!(format_bytes(1288490188), "1.2G");
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        assert_eq!(format_age(1000, 995), "5s");
        assert_eq!(format_age(1000, 1010), "0s");
        assert_eq!(format_age(200, 0), "3m");
        assert_eq!(format_age(2 * 3600 + 59, 0), "2h");
        assert_eq!(format_age(4 * 86_400 + 7, 0), "4d");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration_ms(123), "123 ms");
        assert_eq!(format_duration_ms(2600), "2.6 s");
        assert_eq!(format_duration_ms(65_000), "1m 05s");
    }
}
