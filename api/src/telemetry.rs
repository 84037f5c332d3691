//! Fleet telemetry as the API shows it: drift reports of a fleet slice, health per version,
//! drift thresholds, reference profiles, the event log and captured samples; the queries
//! that choose a slice; and the client calls.

use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_common::sketch::DriftThresholds;
use serde::{Deserialize, Serialize};

use crate::client::{AdminClient, ClientError, escape, query};
use crate::duration::DurationText;
use crate::http::Method;

/// Which windows of which devices a drift or health report covers. `since`/`until` are
/// durations back from now (`90s`, `15m`, `1h`, `7d`); `since_ms`/`until_ms` absolute Unix
/// milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SliceParams {
    /// Version number or alias (drift: default the newest version).
    pub version: Option<String>,
    /// Devices whose labels match, `key=value[,key=value]`.
    #[param(value_type = Option<String>)]
    pub selector: Option<crate::LabelSelector>,
    /// Only these devices, comma-separated ids.
    pub devices: Option<String>,
    /// Windows that ended within this long ago (`90s`, `15m`, `1h`, `7d`).
    #[param(value_type = Option<String>)]
    pub since: Option<DurationText>,
    /// Windows that ended at least this long ago.
    #[param(value_type = Option<String>)]
    pub until: Option<DurationText>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Drift only: `reference` (the version's training data, default) or `version:N` (the
    /// same slice on version N, a number or an alias).
    #[param(value_type = Option<String>)]
    pub against: Option<Against>,
}

/// What a drift report compares its slice with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Against {
    /// The version's reference profile (its training data).
    Reference,
    /// The same slice on another version (a number or an alias).
    Version(String),
}

impl Against {
    pub fn parse(text: &str) -> Result<Against, String> {
        match text {
            "reference" => Ok(Against::Reference),
            other => match other.strip_prefix("version:") {
                Some(v) if !v.is_empty() => Ok(Against::Version(v.to_owned())),
                _ => Err(format!("against {other:?} is not reference or version:N")),
            },
        }
    }
}

impl std::fmt::Display for Against {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Against::Reference => f.write_str("reference"),
            Against::Version(v) => write!(f, "version:{v}"),
        }
    }
}

impl Serialize for Against {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Against {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Against::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl SliceParams {
    fn query(&self) -> String {
        query(&[
            ("version", self.version.clone()),
            ("selector", self.selector.as_ref().map(|s| s.to_string())),
            ("devices", self.devices.clone()),
            ("since", self.since.map(|d| d.to_string())),
            ("until", self.until.map(|d| d.to_string())),
            ("since_ms", self.since_ms.map(|v| v.to_string())),
            ("until_ms", self.until_ms.map(|v| v.to_string())),
            ("against", self.against.as_ref().map(|a| a.to_string())),
        ])
    }
}

/// A feature's profile kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    Numeric,
    Categorical,
}

/// One feature (or prediction output) of a slice against its reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeatureDrift {
    pub name: String,
    pub kind: FeatureKind,
    pub reference_rows: u64,
    pub current_rows: u64,
    /// Nulls and non-finite values in the current slice (counted, never in the quantiles).
    pub current_missing: u64,
    pub ks: Option<f64>,
    pub wasserstein_sigma: Option<f64>,
    pub psi: Option<f64>,
    pub js: Option<f64>,
    pub hellinger: Option<f64>,
    /// Categorical: the largest change in any value's share.
    pub linf: Option<f64>,
    /// 0 none, 1 warn, 2 alert.
    pub psi_level: Option<u8>,
    /// `None`: too few rows for a verdict (or nothing to compare).
    pub drifted: Option<bool>,
    /// Why there is no verdict, when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Drift of a fleet slice against the version's reference or another version's slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriftReport {
    pub model: String,
    pub version: u64,
    /// `reference` or `version N`.
    pub against: String,
    pub devices: u64,
    pub windows: u64,
    pub requests: u64,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub features: Vec<FeatureDrift>,
    pub predictions: Vec<FeatureDrift>,
    pub drifted_features: Vec<String>,
    /// At least the dataset share of the features with a verdict drifted; `None` when no
    /// feature has a verdict.
    pub dataset_drift: Option<bool>,
    /// Telemetry windows the slice's devices dropped (spool full) and lost (spool corrupt).
    pub spool_dropped: u64,
    pub spool_lost: u64,
    /// Windows left out because they do not merge with the slice (another kind or k).
    pub unmergeable_windows: u64,
}

/// Requests, errors and latency of one version over a slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionHealth {
    pub windows: u64,
    pub devices: u64,
    pub requests: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub error_rate: Option<f64>,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p90: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub spool_dropped: u64,
    pub spool_lost: u64,
}

/// `GET /api/v1/models/{model}/health`: every version with windows in the slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthReport {
    pub model: String,
    /// By version number.
    pub versions: BTreeMap<u64, VersionHealth>,
}

/// Thresholds of one metric set; missing fields keep the defaults (KS 0.1, JS 0.1,
/// Wasserstein/σ 0.1, PSI 0.1 warn and 0.25 alert, 1000 rows a side for a verdict).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdOverrides {
    pub ks: Option<f64>,
    pub js: Option<f64>,
    pub wasserstein_sigma: Option<f64>,
    pub psi_warn: Option<f64>,
    pub psi_alert: Option<f64>,
    pub min_rows: Option<u64>,
}

impl ThresholdOverrides {
    fn apply(&self, mut t: DriftThresholds) -> DriftThresholds {
        t.ks = self.ks.unwrap_or(t.ks);
        t.js = self.js.unwrap_or(t.js);
        t.wasserstein_sigma = self.wasserstein_sigma.unwrap_or(t.wasserstein_sigma);
        t.psi_warn = self.psi_warn.unwrap_or(t.psi_warn);
        t.psi_alert = self.psi_alert.unwrap_or(t.psi_alert);
        t.min_rows = self.min_rows.unwrap_or(t.min_rows);
        t
    }
}

/// A model's drift thresholds: defaults for every feature, overrides per feature, and the
/// share of drifted features at which the dataset drifts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelThresholds {
    #[serde(default)]
    pub default: ThresholdOverrides,
    #[serde(default)]
    pub features: BTreeMap<String, ThresholdOverrides>,
    /// Default 0.5.
    #[serde(default)]
    pub dataset_share: Option<f64>,
}

impl ModelThresholds {
    /// The thresholds that judge feature `name`.
    pub fn for_feature(&self, name: &str) -> DriftThresholds {
        let base = self.default.apply(DriftThresholds::default());
        self.features.get(name).map_or(base, |o| o.apply(base))
    }

    /// The share of judged features at which a dataset drifts.
    pub fn dataset_share(&self) -> f64 {
        self.dataset_share.unwrap_or(0.5)
    }
}

/// One feature of a reference profile, summarised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeatureSummary {
    Numeric {
        name: String,
        count: u64,
        nulls: u64,
        non_finite: u64,
        min: Option<f64>,
        max: Option<f64>,
        mean: Option<f64>,
        std_dev: Option<f64>,
        /// At ranks 0.01, 0.25, 0.5, 0.75 and 0.99.
        quantiles: Vec<Option<f64>>,
        /// The KLL sketch's accuracy parameter.
        k: u16,
    },
    Categorical {
        name: String,
        count: u64,
        nulls: u64,
        /// Estimated distinct values.
        distinct: f64,
        /// Whether every value is counted exactly (up to 256 values).
        exact: bool,
        /// The ten most frequent values and their counts.
        top: Vec<(String, u64)>,
    },
}

/// `GET .../versions/{version}/reference`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReferenceSummary {
    pub model: String,
    pub version: u64,
    pub rows: u64,
    pub features: Vec<FeatureSummary>,
}

/// `PUT .../versions/{version}/reference`: what was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReferenceStored {
    pub model: String,
    pub version: u64,
    pub features: Vec<String>,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// `drift_alert`, `drift_cleared`, `rollout.*`, `quality_gate.*`, `trigger.*`.
    pub kind: String,
    pub model: String,
    pub version: Option<u64>,
    /// What the event is about; its fields depend on the kind (a drift event names
    /// `drifted_features`).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// What a `rollout.*` event says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutEventDetail {
    /// The rollout's id.
    pub rollout: String,
    /// What happened, with its reason.
    #[serde(default)]
    pub detail: String,
    /// The wave it happened in.
    #[serde(default)]
    pub wave: usize,
    /// Who acted (a token's name, or the controller).
    #[serde(default)]
    pub actor: String,
}

impl Event {
    /// The detail of a `rollout.*` event.
    pub fn rollout_detail(&self) -> Option<RolloutEventDetail> {
        if !self.kind.starts_with("rollout.") {
            return None;
        }
        serde_json::from_value(self.detail.clone()).ok()
    }

    /// The drifted features a drift event names.
    pub fn drifted_features(&self) -> Option<Vec<String>> {
        #[derive(Deserialize)]
        struct DriftDetail {
            drifted_features: Vec<String>,
        }
        serde_json::from_value::<DriftDetail>(self.detail.clone())
            .ok()
            .map(|d| d.drifted_features)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Events {
    pub events: Vec<Event>,
}

/// `GET /api/v1/events` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only this model's events.
    pub model: Option<String>,
    /// Only events after this id (for following the log).
    pub after: Option<i64>,
    /// At most this many (default 1000, at most 10000).
    pub limit: Option<u32>,
}

/// The format of a captured-samples export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaptureFormat {
    /// One request per line, as JSON.
    #[default]
    Ndjson,
    /// One row per example: device, time, features, then the outputs as JSON.
    Csv,
}

impl CaptureFormat {
    pub fn name(self) -> &'static str {
        match self {
            CaptureFormat::Ndjson => "ndjson",
            CaptureFormat::Csv => "csv",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CaptureQuery {
    /// `ndjson` (default) or `csv`.
    pub format: Option<CaptureFormat>,
}

/// A reference sketch in the DataSketches binary format.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceSketch {
    /// `kll_floats_sketch` or `frequent_strings_sketch` (header `x-datasketches-type`).
    pub sketch_type: String,
    pub bytes: Bytes,
}

fn version_path(model: &str, version: &str) -> String {
    format!(
        "/api/v1/models/{}/versions/{}",
        escape(model),
        escape(version)
    )
}

impl AdminClient {
    /// `GET /api/v1/models/{model}/drift`.
    pub async fn drift_report(
        &self,
        model: &str,
        slice: &SliceParams,
    ) -> Result<DriftReport, ClientError> {
        self.get(&format!(
            "/api/v1/models/{}/drift{}",
            escape(model),
            slice.query()
        ))
        .await
    }

    /// `GET /api/v1/models/{model}/health`.
    pub async fn health(
        &self,
        model: &str,
        slice: &SliceParams,
    ) -> Result<HealthReport, ClientError> {
        self.get(&format!(
            "/api/v1/models/{}/health{}",
            escape(model),
            slice.query()
        ))
        .await
    }

    pub async fn drift_thresholds(&self, model: &str) -> Result<ModelThresholds, ClientError> {
        self.get(&format!(
            "/api/v1/models/{}/drift-thresholds",
            escape(model)
        ))
        .await
    }

    pub async fn set_drift_thresholds(
        &self,
        model: &str,
        thresholds: &ModelThresholds,
    ) -> Result<ModelThresholds, ClientError> {
        self.call(
            Method::PUT,
            &format!("/api/v1/models/{}/drift-thresholds", escape(model)),
            Some(thresholds),
        )
        .await
    }

    /// `PUT .../versions/{version}/reference` with a profile set as `flotilla_common::
    /// telemetry::encode_reference` makes it.
    pub async fn put_reference(
        &self,
        model: &str,
        version: &str,
        encoded: Bytes,
    ) -> Result<ReferenceStored, ClientError> {
        self.send_bytes(
            Method::PUT,
            &format!("{}/reference", version_path(model, version)),
            encoded,
        )
        .await
    }

    pub async fn reference(
        &self,
        model: &str,
        version: &str,
    ) -> Result<ReferenceSummary, ClientError> {
        self.get(&format!("{}/reference", version_path(model, version)))
            .await
    }

    /// One reference feature's sketch, for DataSketches in other languages.
    pub async fn reference_sketch(
        &self,
        model: &str,
        version: &str,
        feature: &str,
    ) -> Result<ReferenceSketch, ClientError> {
        let answer = self
            .get_bytes(&format!(
                "{}/reference/features/{}",
                version_path(model, version),
                escape(feature)
            ))
            .await?;
        let sketch_type = answer
            .headers
            .get("x-datasketches-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(ReferenceSketch {
            sketch_type,
            bytes: answer.body,
        })
    }

    /// Captured samples of a version, in `format`, written to `out` as they arrive (an
    /// export can be larger than memory should hold); returns the bytes written.
    pub async fn export_captures(
        &self,
        model: &str,
        version: &str,
        format: CaptureFormat,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, ClientError> {
        self.get_streamed(
            &format!(
                "{}/captures?format={}",
                version_path(model, version),
                format.name()
            ),
            out,
        )
        .await
    }

    /// `GET /api/v1/events`.
    pub async fn events(&self, event_query: &EventQuery) -> Result<Events, ClientError> {
        self.get(&format!(
            "/api/v1/events{}",
            query(&[
                ("model", event_query.model.clone()),
                ("after", event_query.after.map(|v| v.to_string())),
                ("limit", event_query.limit.map(|v| v.to_string())),
            ])
        ))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_override_defaults_per_feature() {
        let thresholds: ModelThresholds = serde_json::from_str(
            r#"{"default": {"ks": 0.2}, "features": {"petal": {"ks": 0.05, "min_rows": 10}}}"#,
        )
        .unwrap();
        assert_eq!(thresholds.for_feature("sepal").ks, 0.2);
        assert_eq!(thresholds.for_feature("petal").ks, 0.05);
        assert_eq!(thresholds.for_feature("petal").min_rows, 10);
        assert_eq!(
            thresholds.for_feature("sepal").js,
            DriftThresholds::default().js
        );
        assert_eq!(thresholds.dataset_share(), 0.5);
        assert!(serde_json::from_str::<ModelThresholds>(r#"{"defaults": {}}"#).is_err());
    }

    #[test]
    fn slice_queries_carry_only_what_is_set() {
        let slice = SliceParams {
            version: Some("production".into()),
            selector: Some(crate::LabelSelector::parse("region=eu").unwrap()),
            since: Some(DurationText::parse("15m").unwrap()),
            ..SliceParams::default()
        };
        assert_eq!(
            slice.query(),
            "?version=production&selector=region%3Deu&since=15m"
        );
        assert_eq!(SliceParams::default().query(), "");
    }

    #[test]
    fn drift_events_name_their_features() {
        let event = Event {
            id: 1,
            at: 0,
            kind: "drift_alert".into(),
            model: "iris".into(),
            version: Some(1),
            detail: serde_json::json!({"drifted_features": ["a", "b"], "scores": {}}),
        };
        assert_eq!(event.drifted_features().unwrap(), ["a", "b"]);
        let other = Event {
            detail: serde_json::json!({"run": "x"}),
            ..event
        };
        assert!(other.drifted_features().is_none());
    }
}
