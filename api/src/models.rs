//! Models and versions in the registry: listing, pushing (with metrics, tags, lineage and
//! feature names), aliases, retirement and the promotion quality gate; and the client calls.

use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_proto::inference::TensorMetadata;
use flotilla_proto::trust::Envelope;
use serde::{Deserialize, Serialize};

use crate::client::{AdminClient, ClientError, escape};
use crate::http::Method;
use crate::quality::{QualityPolicy, RuleOutcome};

/// A model in the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelSummary {
    pub name: String,
    pub versions: u64,
    pub latest_version: Option<u64>,
    pub aliases: BTreeMap<String, u64>,
    /// Unix seconds.
    pub created: i64,
}

/// One registered version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionView {
    pub model: String,
    pub version: u64,
    pub artifact_sha256: String,
    pub artifact_size: u64,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    pub metrics: BTreeMap<String, f64>,
    pub tags: BTreeMap<String, String>,
    pub lineage: BTreeMap<String, String>,
    /// Unix seconds.
    pub created: i64,
    /// When retired: kept for audit and rollback history, no longer deployable.
    pub retired: Option<i64>,
    /// The aliases pointing at this version.
    pub aliases: Vec<String>,
    /// When the signed manifest expires (the hub re-signs before).
    pub manifest_expires: i64,
}

/// An alias moved or removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AliasChange {
    pub alias: String,
    /// `None` when the alias was removed.
    pub version: Option<u64>,
    pub at: i64,
    pub actor: String,
}

/// `GET /api/v1/models/{model}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelDetail {
    pub name: String,
    pub aliases: BTreeMap<String, u64>,
    pub alias_history: Vec<AliasChange>,
    pub versions: Vec<VersionView>,
}

/// What travels with a pushed file, as query parameters: `metric.NAME=NUMBER`,
/// `tag.NAME=VALUE`, `lineage.NAME=VALUE`, `features=a,b`, `categorical=a,b`,
/// `feature_input=NAME`, `predictions=a,b`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushRequest {
    pub metrics: BTreeMap<String, f64>,
    pub tags: BTreeMap<String, String>,
    /// E.g. `dataset`, `commit`, `parent`.
    pub lineage: BTreeMap<String, String>,
    /// Names of the feature input's columns (default: the previous version's, else generic).
    pub feature_names: Option<Vec<String>>,
    /// The input whose columns are the features (default: the first 2-D numeric input).
    pub feature_input: Option<String>,
    /// The outputs that are predictions (default: every output).
    pub prediction_outputs: Option<Vec<String>>,
    /// Features counted by value instead of sketched as numbers.
    pub categorical: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PushQueryError(pub String);

fn names(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

impl PushRequest {
    /// Whether the request survives its query string: names travel as comma-separated
    /// lists, so a name with a comma (a CSV header `"x,1"`) would split into two.
    pub fn check(&self) -> Result<(), PushQueryError> {
        let lists = [
            ("feature", self.feature_names.as_deref().unwrap_or_default()),
            ("categorical feature", &self.categorical[..]),
            (
                "prediction output",
                self.prediction_outputs.as_deref().unwrap_or_default(),
            ),
        ];
        for (what, names) in lists {
            if let Some(name) = names
                .iter()
                .find(|n| n.contains(',') || n.trim().is_empty())
            {
                return Err(PushQueryError(format!(
                    "{what} name {name:?} cannot be sent: names may not be empty or contain commas (rename the column)"
                )));
            }
        }
        Ok(())
    }

    /// The query string (`?...`, empty for nothing).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        let list = |items: &[String]| {
            items
                .iter()
                .map(|n| escape(n))
                .collect::<Vec<_>>()
                .join("%2C")
        };
        if let Some(names) = &self.feature_names {
            parts.push(format!("features={}", list(names)));
        }
        if !self.categorical.is_empty() {
            parts.push(format!("categorical={}", list(&self.categorical)));
        }
        if let Some(outputs) = self.prediction_outputs.as_ref().filter(|o| !o.is_empty()) {
            parts.push(format!("predictions={}", list(outputs)));
        }
        if let Some(input) = &self.feature_input {
            parts.push(format!("feature_input={}", escape(input)));
        }
        for (name, value) in &self.metrics {
            parts.push(format!("metric.{}={value}", escape(name)));
        }
        for (prefix, map) in [("tag", &self.tags), ("lineage", &self.lineage)] {
            for (name, value) in map {
                parts.push(format!("{prefix}.{}={}", escape(name), escape(value)));
            }
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }

    /// Reads the query parameters (already percent-decoded) back.
    pub fn from_query(query: &BTreeMap<String, String>) -> Result<PushRequest, PushQueryError> {
        let mut request = PushRequest::default();
        for (key, value) in query {
            if let Some(name) = key.strip_prefix("metric.") {
                let number: f64 = value
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite())
                    .ok_or_else(|| {
                        PushQueryError(format!("metric {name:?} is {value:?}, not a number"))
                    })?;
                request.metrics.insert(name.to_owned(), number);
            } else if let Some(name) = key.strip_prefix("tag.") {
                request.tags.insert(name.to_owned(), value.clone());
            } else if let Some(name) = key.strip_prefix("lineage.") {
                request.lineage.insert(name.to_owned(), value.clone());
            } else if key == "features" {
                request.feature_names =
                    Some(value.split(',').map(|n| n.trim().to_owned()).collect());
            } else if key == "feature_input" {
                request.feature_input = Some(value.clone());
            } else if key == "predictions" {
                request.prediction_outputs = Some(names(value));
            } else if key == "categorical" {
                request.categorical = names(value);
            } else {
                return Err(PushQueryError(format!(
                    "unknown parameter {key:?}; use metric.NAME, tag.NAME, lineage.NAME, features, categorical, feature_input or predictions"
                )));
            }
        }
        Ok(request)
    }
}

/// The quality gate's verdict on a pushed version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QualityGateResult {
    pub passed: bool,
    /// A rejected version is retired: it can never be deployed.
    pub rejected: bool,
    /// The version the candidate was compared with (none: nothing to compare with yet).
    pub baseline_version: Option<u64>,
    pub outcomes: Vec<RuleOutcome>,
    /// The canary rollout the gate started, when it has an `auto_rollout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
}

/// `POST /api/v1/models/{model}/versions`: 201 with a new version, 200 when the same
/// content was registered already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushAnswer {
    pub model: String,
    pub version: u64,
    pub created: bool,
    pub sha256: String,
    pub size: u64,
    /// `None` when the model has no quality gate (or the content was registered already).
    pub quality_gate: Option<QualityGateResult>,
}

/// A version number or an alias name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum VersionOrAlias {
    Number(u64),
    Alias(String),
}

impl std::fmt::Display for VersionOrAlias {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionOrAlias::Number(n) => write!(f, "{n}"),
            VersionOrAlias::Alias(a) => f.write_str(a),
        }
    }
}

impl VersionOrAlias {
    /// `7` is a version number, anything else an alias name.
    pub fn parse(text: &str) -> VersionOrAlias {
        text.parse::<u64>()
            .map(VersionOrAlias::Number)
            .unwrap_or_else(|_| VersionOrAlias::Alias(text.to_owned()))
    }
}

/// `PUT /api/v1/models/{model}/aliases/{alias}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasRequest {
    pub version: VersionOrAlias,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AliasAnswer {
    pub model: String,
    pub alias: String,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetireAnswer {
    pub model: String,
    pub version: u64,
    pub retired: bool,
}

fn model_path(model: &str) -> String {
    format!("/api/v1/models/{}", escape(model))
}

impl AdminClient {
    pub async fn models(&self) -> Result<Vec<ModelSummary>, ClientError> {
        self.get("/api/v1/models").await
    }

    pub async fn model(&self, model: &str) -> Result<ModelDetail, ClientError> {
        self.get(&model_path(model)).await
    }

    /// A version by number or alias.
    pub async fn version(&self, model: &str, version: &str) -> Result<VersionView, ClientError> {
        self.get(&format!(
            "{}/versions/{}",
            model_path(model),
            escape(version)
        ))
        .await
    }

    /// The version's signed manifest envelope.
    pub async fn manifest(&self, model: &str, version: &str) -> Result<Envelope, ClientError> {
        self.get(&format!(
            "{}/versions/{}/manifest",
            model_path(model),
            escape(version)
        ))
        .await
    }

    /// Pushes an ONNX file as the model's next version.
    pub async fn push(
        &self,
        model: &str,
        file: Bytes,
        request: &PushRequest,
    ) -> Result<PushAnswer, ClientError> {
        self.push_with_progress(model, file, request, |_| {}).await
    }

    /// `push`, calling `progress` with the bytes sent so far.
    pub async fn push_with_progress(
        &self,
        model: &str,
        file: Bytes,
        request: &PushRequest,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<PushAnswer, ClientError> {
        request
            .check()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.upload_with_progress(
            &format!("{}/versions{}", model_path(model), request.to_query()),
            file,
            progress,
        )
        .await
    }

    pub async fn retire(&self, model: &str, version: u64) -> Result<RetireAnswer, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("{}/versions/{version}/retire", model_path(model)),
            None,
        )
        .await
    }

    /// Points `alias` at a version number or at another alias's version.
    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: VersionOrAlias,
    ) -> Result<AliasAnswer, ClientError> {
        self.call(
            Method::PUT,
            &format!("{}/aliases/{}", model_path(model), escape(alias)),
            Some(&AliasRequest { version }),
        )
        .await
    }

    pub async fn remove_alias(&self, model: &str, alias: &str) -> Result<(), ClientError> {
        self.call_empty::<()>(
            Method::DELETE,
            &format!("{}/aliases/{}", model_path(model), escape(alias)),
            None,
        )
        .await
    }

    pub async fn quality_gate(&self, model: &str) -> Result<QualityPolicy, ClientError> {
        self.get(&format!("{}/quality-gate", model_path(model)))
            .await
    }

    pub async fn set_quality_gate(
        &self,
        model: &str,
        policy: &QualityPolicy,
    ) -> Result<QualityPolicy, ClientError> {
        self.call(
            Method::PUT,
            &format!("{}/quality-gate", model_path(model)),
            Some(policy),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_request_survives_its_query_string() {
        let request = PushRequest {
            metrics: BTreeMap::from([("auc".to_owned(), 0.91)]),
            tags: BTreeMap::from([("team".to_owned(), "a b".to_owned())]),
            lineage: BTreeMap::from([("parent".to_owned(), "3".to_owned())]),
            feature_names: Some(vec!["x,1".into(), "y".into()]),
            feature_input: Some("float_input".into()),
            prediction_outputs: Some(vec!["label".into()]),
            categorical: vec!["y".into()],
        };
        let query = request.to_query();
        let decoded = server_decode(&query);
        let back = PushRequest::from_query(&decoded).unwrap();
        // A comma inside a feature name cannot survive a comma-separated list: such a
        // request is refused before it is sent.
        assert_eq!(
            back.feature_names,
            Some(vec!["x".into(), "1".into(), "y".into()])
        );
        assert!(request.check().unwrap_err().0.contains("\"x,1\""));
        let fine = PushRequest {
            feature_names: Some(vec!["x".into(), "y".into()]),
            ..request
        };
        fine.check().unwrap();
        let decoded = server_decode(&fine.to_query());
        assert_eq!(PushRequest::from_query(&decoded).unwrap(), fine);
        let unknown = BTreeMap::from([("colour".to_owned(), "red".to_owned())]);
        assert!(
            PushRequest::from_query(&unknown)
                .unwrap_err()
                .0
                .contains("metric.NAME")
        );
        let bad = BTreeMap::from([("metric.auc".to_owned(), "high".to_owned())]);
        assert!(
            PushRequest::from_query(&bad)
                .unwrap_err()
                .0
                .contains("not a number")
        );
    }

    /// What a server decodes: split on & and =, then percent-decode each side.
    fn server_decode(query: &str) -> BTreeMap<String, String> {
        query
            .trim_start_matches('?')
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    fn percent_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn versions_and_aliases_are_told_apart() {
        assert_eq!(VersionOrAlias::parse("7"), VersionOrAlias::Number(7));
        assert_eq!(
            VersionOrAlias::parse("production"),
            VersionOrAlias::Alias("production".into())
        );
        let request: AliasRequest = serde_json::from_str(r#"{"version": 3}"#).unwrap();
        assert_eq!(request.version, VersionOrAlias::Number(3));
        let request: AliasRequest = serde_json::from_str(r#"{"version": "staging"}"#).unwrap();
        assert_eq!(request.version.to_string(), "staging");
        assert!(serde_json::from_str::<AliasRequest>(r#"{"version": [1]}"#).is_err());
    }
}
