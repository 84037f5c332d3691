//! Durations as operators write them: `250ms`, `90s`, `15m`, `24h`, `7d` (a bare number is
//! seconds). One parser for the API's query parameters and the CLI's flags.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration like 250ms, 90s, 15m, 24h or 7d")]
    NotANumber(String),
    #[error("{text:?}: the unit {unit:?} is not ms, s, m, h or d")]
    Unit { text: String, unit: String },
    #[error("{0:?} is longer than this hub can count")]
    TooLong(String),
}

/// Parses `N[ms|s|m|h|d]`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let count: u64 = number
        .parse()
        .map_err(|_| DurationError::NotANumber(text.to_owned()))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(DurationError::Unit {
                text: text.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    let milliseconds = count
        .checked_mul(unit_ms)
        .filter(|ms| *ms <= i64::MAX as u64)
        .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
    Ok(Duration::from_millis(milliseconds))
}

/// A duration as a query parameter or a document field: written `15m`, parsed once on the
/// way in (a bad one is refused there, with the reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationText(pub Duration);

impl DurationText {
    pub fn parse(text: &str) -> Result<DurationText, DurationError> {
        parse_duration(text).map(DurationText)
    }

    pub fn as_millis(&self) -> i64 {
        self.0.as_millis() as i64
    }
}

impl std::fmt::Display for DurationText {
    /// The shortest exact form: `90s` stays `90s`, `2m` stays `2m`, `250ms` stays `250ms`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms > 0 && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl std::str::FromStr for DurationText {
    type Err = DurationError;
    fn from_str(text: &str) -> Result<DurationText, DurationError> {
        DurationText::parse(text)
    }
}

impl serde::Serialize for DurationText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DurationText::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for DurationText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A duration: N followed by ms, s, m, h or d (a bare N is seconds)",
            ))
            .examples(["15m"])
            .into()
    }
}

impl utoipa::ToSchema for DurationText {}

/// `parse_duration` in whole milliseconds, for arithmetic on Unix-millisecond times.
pub fn parse_duration_ms(text: &str) -> Result<i64, DurationError> {
    parse_duration(text).map(|d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(
            parse_duration(" 24h ").unwrap(),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration_ms("2s").unwrap(), 2000);
    }

    #[test]
    fn duration_text_round_trips_in_its_shortest_form() {
        for (text, shown) in [
            ("90s", "90s"),
            ("120", "2m"),
            ("1500ms", "1500ms"),
            ("7d", "7d"),
        ] {
            let parsed: DurationText = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(DurationText::parse(shown).unwrap(), parsed);
        }
        let bad = serde_json::from_value::<DurationText>(serde_json::json!("5y")).unwrap_err();
        assert!(bad.to_string().contains("ms, s, m, h or d"), "{bad}");
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert!(matches!(
            parse_duration("h"),
            Err(DurationError::NotANumber(_))
        ));
        assert!(matches!(
            parse_duration("-5s"),
            Err(DurationError::NotANumber(_))
        ));
        let unit = parse_duration("5y").unwrap_err();
        assert!(unit.to_string().contains("ms, s, m, h or d"), "{unit}");
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::NotANumber(_) | DurationError::TooLong(_))
        ));
        assert!(matches!(
            parse_duration("9999999999999999d"),
            Err(DurationError::TooLong(_))
        ));
    }
}
