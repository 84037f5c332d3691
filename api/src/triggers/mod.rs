//! Retraining triggers: the rule an operator sets per model, the runs a trigger made (with
//! the payload its action received), and the client calls.

pub mod rule;

use serde::{Deserialize, Serialize};

pub use rule::{
    Action, Command, DriftCondition, ErrorRateCondition, RuleError, TriggerRule, Webhook,
};

use crate::client::{AdminClient, ClientError, escape, query};
use crate::http::Method;
use crate::telemetry::{DriftReport, VersionHealth};

/// Why a trigger fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerReason {
    Drift,
    ErrorRate,
    Manual,
}

impl TriggerReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerReason::Drift => "drift",
            TriggerReason::ErrorRate => "error_rate",
            TriggerReason::Manual => "manual",
        }
    }

    pub fn parse(text: &str) -> Option<TriggerReason> {
        [
            TriggerReason::Drift,
            TriggerReason::ErrorRate,
            TriggerReason::Manual,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

/// How a run's action went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    Retrying,
    Succeeded,
    Failed,
    /// The hub stopped while the run was in flight.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Retrying => "retrying",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<RunStatus> {
        [
            RunStatus::Pending,
            RunStatus::Retrying,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Interrupted,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether the run is still being carried out.
    pub fn in_flight(self) -> bool {
        matches!(self, RunStatus::Pending | RunStatus::Retrying)
    }
}

/// What one evaluation window showed for the watched version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Observation {
    pub version: u64,
    pub since_ms: i64,
    pub until_ms: i64,
    /// Devices with enough rows to judge their drift, and those of them that drifted.
    pub judged_devices: u64,
    pub drifting_devices: u64,
    /// Devices that sent windows at all.
    pub reporting_devices: u64,
    pub requests: u64,
    pub errors: u64,
    /// When the version has no reference profile, drift cannot be judged.
    pub drift_note: Option<String>,
}

impl Observation {
    pub fn drifting_percent(&self) -> Option<f64> {
        (self.judged_devices > 0)
            .then(|| self.drifting_devices as f64 * 100.0 / self.judged_devices as f64)
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// A report the payload carries, or why it could not be made (a trigger still fires when
/// its report fails).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ReportOrError<T> {
    Report(T),
    Error { error: String },
}

/// Where the receiver of a payload finds the data behind it (admin API links; a read token
/// suffices).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CapturedDataLinks {
    pub captures_csv: String,
    pub captures_ndjson: String,
    pub drift_report: String,
    pub health: String,
    pub reference: String,
    pub auth: String,
}

/// What a trigger's action receives: the webhook's JSON body, or the command's
/// `FLOTILLA_TRIGGER_FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerPayload {
    /// The run id (also `X-Flotilla-Delivery`).
    pub id: String,
    /// Always `retraining-trigger`.
    pub event: String,
    pub model: String,
    /// The watched version (none when the alias pointed nowhere).
    pub version: Option<u64>,
    pub alias: String,
    pub reason: TriggerReason,
    pub note: Option<String>,
    /// Unix seconds.
    pub fired_at: i64,
    /// The windows that made the trigger fire (the firing streak's bad windows).
    pub evidence: Vec<Observation>,
    /// The hub's API URL.
    pub hub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub health: Option<ReportOrError<VersionHealth>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub drift_report: Option<ReportOrError<DriftReport>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_data: Option<CapturedDataLinks>,
}

/// One run of a trigger as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerRun {
    pub id: String,
    pub model: String,
    pub version: Option<u64>,
    pub reason: TriggerReason,
    pub status: RunStatus,
    pub attempts: u32,
    /// Unix seconds.
    pub fired_at: i64,
    pub updated: i64,
    /// What the last attempt came to.
    pub outcome: String,
    pub payload: TriggerPayload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerRuns {
    pub runs: Vec<TriggerRun>,
}

/// `GET /api/v1/triggers` query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TriggerRunQuery {
    /// Only this model's runs.
    pub model: Option<String>,
    /// 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

/// `POST /api/v1/models/{model}/trigger/fire` body (optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FireRequest {
    /// Why, for the payload and the history.
    #[serde(default)]
    pub note: Option<String>,
}

fn trigger_path(model: &str) -> String {
    format!("/api/v1/models/{}/trigger", escape(model))
}

impl AdminClient {
    /// The model's rule, the webhook secret not shown.
    pub async fn trigger_rule(&self, model: &str) -> Result<TriggerRule, ClientError> {
        self.get(&trigger_path(model)).await
    }

    /// Sets the model's rule; the answer shows it with the secret hidden.
    pub async fn set_trigger_rule(
        &self,
        model: &str,
        rule: &TriggerRule,
    ) -> Result<TriggerRule, ClientError> {
        self.call(Method::PUT, &trigger_path(model), Some(rule))
            .await
    }

    pub async fn remove_trigger_rule(&self, model: &str) -> Result<(), ClientError> {
        self.call_empty::<()>(Method::DELETE, &trigger_path(model), None)
            .await
    }

    /// Fires the model's trigger now.
    pub async fn fire_trigger(
        &self,
        model: &str,
        request: &FireRequest,
    ) -> Result<TriggerRun, ClientError> {
        self.call(
            Method::POST,
            &format!("{}/fire", trigger_path(model)),
            Some(request),
        )
        .await
    }

    /// Runs, newest first.
    pub async fn trigger_runs(
        &self,
        run_query: &TriggerRunQuery,
    ) -> Result<TriggerRuns, ClientError> {
        self.get(&format!(
            "/api/v1/triggers{}",
            query(&[
                ("model", run_query.model.clone()),
                ("limit", run_query.limit.map(|l| l.to_string())),
            ])
        ))
        .await
    }

    pub async fn trigger_run(&self, id: &str) -> Result<TriggerRun, ClientError> {
        self.get(&format!("/api/v1/triggers/{}", escape(id))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_report_travels_as_its_error() {
        let failed: ReportOrError<VersionHealth> =
            serde_json::from_str(r#"{"error": "store down"}"#).unwrap();
        assert_eq!(
            failed,
            ReportOrError::Error {
                error: "store down".into()
            }
        );
        for status in ["pending", "retrying", "succeeded", "failed", "interrupted"] {
            assert_eq!(RunStatus::parse(status).unwrap().as_str(), status);
        }
        assert!(RunStatus::Retrying.in_flight() && !RunStatus::Failed.in_flight());
        assert_eq!(
            TriggerReason::parse("error_rate"),
            Some(TriggerReason::ErrorRate)
        );
    }
}
