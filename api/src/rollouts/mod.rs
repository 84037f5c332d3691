//! Rollouts in waves: the spec an operator writes, the rollout as the hub shows it, the
//! gates' verdicts, the operator's commands, and the client calls that carry them.

pub mod spec;

use serde::{Deserialize, Serialize};

pub use spec::{HealthGates, OfflinePolicy, OnFailure, RateLimit, RolloutSpec, SpecError};

use crate::client::{AdminClient, ClientError, escape};
use crate::http::Method;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    Pending,
    Running,
    WaitingForApproval,
    Paused,
    RollingBack,
    RolledBack,
    Aborted,
    Completed,
}

impl RolloutPhase {
    /// Whether the rollout still has work to do.
    pub fn is_active(self) -> bool {
        !matches!(
            self,
            RolloutPhase::RolledBack | RolloutPhase::Aborted | RolloutPhase::Completed
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            RolloutPhase::Pending => "pending",
            RolloutPhase::Running => "running",
            RolloutPhase::WaitingForApproval => "waiting_for_approval",
            RolloutPhase::Paused => "paused",
            RolloutPhase::RollingBack => "rolling_back",
            RolloutPhase::RolledBack => "rolled_back",
            RolloutPhase::Aborted => "aborted",
            RolloutPhase::Completed => "completed",
        }
    }
}

impl std::fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A gate's verdict; a gate with too little data is inconclusive (the wave waits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum GateVerdict {
    Pass,
    Fail(String),
    Inconclusive(String),
}

/// One gate's verdict on the current wave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateResult {
    /// `installs`, `error_rate`, `latency_p99`, `input_drift`, `prediction_drift` or
    /// `reference_drift`.
    pub gate: String,
    #[serde(flatten)]
    pub verdict: GateVerdict,
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutView {
    pub id: String,
    pub model: String,
    pub version: u64,
    pub phase: RolloutPhase,
    /// The current wave, from 1 (0 before the first).
    pub wave: usize,
    /// Cumulative share of the targets per wave, in percent.
    pub waves: Vec<f64>,
    /// Devices the rollout covers.
    pub targets: usize,
    /// Devices in each wave (cumulative).
    pub wave_sizes: Vec<usize>,
    /// Devices told to install so far.
    pub told: usize,
    pub installed: usize,
    pub failed: usize,
    /// Told devices back on their previous version (while and after rolling back).
    pub restored: usize,
    /// Why the rollout is paused, failed or waiting on its gates.
    pub reason: Option<String>,
    /// The last gate verdicts.
    pub gates: Vec<GateResult>,
    /// Unix seconds.
    pub started_at: Option<i64>,
    pub wave_started_at: Option<i64>,
    /// When the wave's installs met the success threshold: its soak starts here.
    pub installs_met_at: Option<i64>,
    pub spec: RolloutSpec,
    pub created: i64,
    pub updated: i64,
}

/// What an operator can tell a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    Pause,
    Resume,
    Approve,
    Abort,
    Rollback,
    /// Finish now: every remaining device is told, the alias moves.
    Promote,
}

impl RolloutAction {
    pub const ALL: [RolloutAction; 6] = [
        RolloutAction::Pause,
        RolloutAction::Resume,
        RolloutAction::Approve,
        RolloutAction::Abort,
        RolloutAction::Rollback,
        RolloutAction::Promote,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Approve => "approve",
            RolloutAction::Abort => "abort",
            RolloutAction::Rollback => "rollback",
            RolloutAction::Promote => "promote",
        }
    }

    pub fn parse(text: &str) -> Option<RolloutAction> {
        RolloutAction::ALL.into_iter().find(|a| a.name() == text)
    }
}

impl AdminClient {
    /// `POST /api/v1/rollouts`.
    pub async fn create_rollout(&self, spec: &RolloutSpec) -> Result<RolloutView, ClientError> {
        self.call(Method::POST, "/api/v1/rollouts", Some(spec))
            .await
    }

    /// `GET /api/v1/rollouts`: every rollout, newest first.
    pub async fn rollouts(&self) -> Result<Vec<RolloutView>, ClientError> {
        self.get("/api/v1/rollouts").await
    }

    /// `GET /api/v1/rollouts/{id}`.
    pub async fn rollout(&self, id: &str) -> Result<RolloutView, ClientError> {
        self.get(&format!("/api/v1/rollouts/{}", escape(id))).await
    }

    /// `POST /api/v1/rollouts/{id}/{action}`.
    pub async fn rollout_command(
        &self,
        id: &str,
        action: RolloutAction,
    ) -> Result<RolloutView, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/rollouts/{}/{}", escape(id), action.name()),
            None,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_and_verdicts_keep_their_wire_names() {
        assert_eq!(
            serde_json::to_string(&RolloutPhase::WaitingForApproval).unwrap(),
            "\"waiting_for_approval\""
        );
        let gate = GateResult {
            gate: "error_rate".into(),
            verdict: GateVerdict::Fail("too many".into()),
        };
        assert_eq!(
            serde_json::to_value(&gate).unwrap(),
            serde_json::json!({"gate": "error_rate", "verdict": "fail", "reason": "too many"})
        );
        let pass: GateResult =
            serde_json::from_str(r#"{"gate": "installs", "verdict": "pass"}"#).unwrap();
        assert_eq!(pass.verdict, GateVerdict::Pass);
        for action in RolloutAction::ALL {
            assert_eq!(RolloutAction::parse(action.name()), Some(action));
        }
    }
}
