//! Human units at the CLI's edge: parsing sizes typed by the user (`4G`,
//! `512M`, `8GiB`) and formatting sizes, ages and durations for output.
//! Pure functions only; the daemon always speaks MiB, bytes and unix seconds.

/// Parses a size into MiB. A plain number is MiB; `M`/`G`/`T` suffixes (with
/// optional `i`/`B`, any case) are binary multiples. Fractions are allowed as
/// long as the result is a whole, non-zero number of MiB.
pub fn parse_size_mib(input: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {input:?}: use a number with M or G, e.g. 4G");
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let factor: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mi" | "mib" => 1.0,
        "g" | "gb" | "gi" | "gib" => 1024.0,
        "t" | "tb" | "ti" | "tib" => 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let mib = value * factor;
    if mib.fract() != 0.0 {
        return Err(format!(
            "invalid size {input:?}: must be a whole number of MiB"
        ));
    }
    if mib < 1.0 {
        return Err(format!("invalid size {input:?}: must be at least 1M"));
    }
    if mib > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(mib as u64)
}

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
    fn sizes_parse_into_mib() {
        assert_eq!(parse_size_mib("4G"), Ok(4096));
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("8GiB"), Ok(8192));
        assert_eq!(parse_size_mib("8gb"), Ok(8192));
        assert_eq!(parse_size_mib("300"), Ok(300));
        assert_eq!(parse_size_mib("1.5G"), Ok(1536));
        assert_eq!(parse_size_mib("1T"), Ok(1024 * 1024));
    }

    #[test]
    fn bad_sizes_say_how_to_write_one() {
        assert_eq!(
            parse_size_mib("12X").unwrap_err(),
            "invalid size \"12X\": use a number with M or G, e.g. 4G"
        );
        assert!(parse_size_mib("").is_err());
        assert!(parse_size_mib("G").is_err());
        assert!(parse_size_mib("-4G").is_err());
        assert!(parse_size_mib("1.2.3G").is_err());
        assert!(parse_size_mib("0").unwrap_err().contains("at least 1M"));
        assert!(parse_size_mib("1.5").unwrap_err().contains("whole number"));
    }

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
