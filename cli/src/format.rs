//! How the CLI writes times and numbers for people.

/// `YYYY-MM-DD HH:MM:SS` (UTC) for a Unix time.
pub fn utc(at: i64) -> String {
    let (days, seconds) = (at.div_euclid(86_400), at.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// "12s ago", "3m ago", "never" for a Unix time, seen from `now`.
pub fn seen_ago(at: Option<i64>, now: i64) -> String {
    let Some(at) = at else { return "never".into() };
    match (now - at).max(0) {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

/// A figure for a table: `-` when absent, scientific when very large or small.
pub fn figure(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() && (v.abs() >= 1e5 || (v != 0.0 && v.abs() < 1e-3)) => {
            format!("{v:.3e}")
        }
        Some(v) if v.is_finite() => format!("{v:.4}"),
        Some(v) => v.to_string(),
        None => "-".into(),
    }
}

/// `N` or `-`.
pub fn optional<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06:40");
    }

    #[test]
    fn ages_and_figures() {
        assert_eq!(seen_ago(None, 100), "never");
        assert_eq!(seen_ago(Some(90), 100), "10s ago");
        assert_eq!(seen_ago(Some(0), 7200), "2h ago");
        assert_eq!(figure(None), "-");
        assert_eq!(figure(Some(0.5)), "0.5000");
        assert_eq!(figure(Some(1e-6)), "1.000e-6");
    }
}
