//! Labels and label selectors, parsed once: `key=value[,key=value]`. A selector matches a
//! device when the device has every one of its labels (an empty selector matches every
//! device). On the wire a selector is its text, so specs and queries stay readable.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Labels as a device carries them.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label {part:?} is not key=value (write labels as key=value[,key=value])")]
pub struct LabelError {
    pub part: String,
}

/// Parses `key=value[,key=value]`; blanks around keys and values are dropped, empty parts
/// skipped.
pub fn parse_labels(text: &str) -> Result<Labels, LabelError> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| match part.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(LabelError {
                part: part.to_owned(),
            }),
        })
        .collect()
}

/// The labels a device must have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSelector(Labels);

impl LabelSelector {
    /// Every device.
    pub fn all() -> LabelSelector {
        LabelSelector::default()
    }

    pub fn parse(text: &str) -> Result<LabelSelector, LabelError> {
        parse_labels(text).map(LabelSelector)
    }

    pub fn from_labels(labels: Labels) -> LabelSelector {
        LabelSelector(labels)
    }

    pub fn labels(&self) -> &Labels {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a device with `labels` is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = LabelError;
    fn from_str(text: &str) -> Result<LabelSelector, LabelError> {
        LabelSelector::parse(text)
    }
}

impl Serialize for LabelSelector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LabelSelector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        LabelSelector::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for LabelSelector {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "Labels a device must have, key=value[,key=value]; empty selects every device",
            ))
            .examples(["region=eu,site=lab"])
            .into()
    }
}

impl utoipa::ToSchema for LabelSelector {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_once_and_match_all_their_labels() {
        let selector = LabelSelector::parse(" region = eu ,site=lab,").unwrap();
        assert_eq!(selector.to_string(), "region=eu,site=lab");
        let device = parse_labels("region=eu,site=lab,n=3").unwrap();
        assert!(selector.matches(&device));
        assert!(LabelSelector::all().matches(&device));
        assert!(!selector.matches(&parse_labels("region=eu").unwrap()));
        assert!(!selector.matches(&parse_labels("region=us,site=lab").unwrap()));
    }

    #[test]
    fn a_part_without_a_key_is_named() {
        let error = LabelSelector::parse("region=eu,lab").unwrap_err();
        assert_eq!(error.part, "lab");
        assert!(error.to_string().contains("key=value"));
        assert!(LabelSelector::parse("=x").is_err());
    }

    #[test]
    fn selectors_travel_as_their_text() {
        let selector = LabelSelector::parse("b=2,a=1").unwrap();
        assert_eq!(serde_json::to_string(&selector).unwrap(), "\"a=1,b=2\"");
        let back: LabelSelector = serde_json::from_str("\"a=1,b=2\"").unwrap();
        assert_eq!(back, selector);
        assert!(serde_json::from_str::<LabelSelector>("\"nonsense\"").is_err());
    }
}
