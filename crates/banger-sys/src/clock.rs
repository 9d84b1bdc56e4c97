//! The wall clock as banger records it: whole Unix seconds, for
//! `created_at`/`started_at` fields and ages. Not for measuring durations
//! (that is `Instant`'s job).

/// Seconds since the Unix epoch (0 if the clock is set before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_this_code_was_written() {
        assert!(super::unix_now() > 1_700_000_000);
    }
}
