//! Telemetry: how a model version's tensors map to named features and predictions, and the
//! topics windows travel on. The batch itself is a compact binary frame (see
//! `flotilla_common::telemetry`), not JSON: it carries DataSketches images.

use serde::{Deserialize, Serialize};

/// Which input holds the features and which outputs are predictions. Travels in the signed
/// model manifest so every device names features the way the version's reference does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureMap {
    /// The input tensor whose rows are examples and whose columns are features (`[N, F]`).
    pub input: String,
    /// One name per column, in order.
    pub features: Vec<String>,
    /// Features (by name) that are categorical: counted by value rather than sketched as
    /// numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categorical: Vec<String>,
    #[serde(default)]
    pub predictions: Vec<PredictionOutput>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictionOutput {
    pub output: String,
    pub kind: PredictionKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionKind {
    /// Class labels: counted by value.
    Class,
    /// Scores: quantiles (KLL k=1024). A `[N, C]` output gives one profile per column,
    /// named `output[c]`.
    Score,
}

pub mod topics {
    /// A device's closed telemetry windows (QoS 1).
    pub fn telemetry(device_id: &str) -> String {
        format!("{}/{device_id}/telemetry", crate::control::topics::PREFIX)
    }
    pub const HUB_TELEMETRY: &str = "$share/hub-telemetry/flotilla/v1/devices/+/telemetry";
}
