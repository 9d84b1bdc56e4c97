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

pub use banger_api::units::{format_age, format_bytes, format_duration_ms, format_mib};

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
}
