//! A rollout spec: what to roll out to which devices, in which waves, judged by which gates.
//! The same document through the API (JSON) and the CLI (TOML or flags); checked here, with
//! a reason for every refusal, so the CLI refuses a bad file before it reaches the hub.

use serde::{Deserialize, Serialize};

use crate::selector::LabelSelector;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// The model to roll out (required, except in a quality gate's `auto_rollout`, which
    /// fills it in).
    #[serde(default)]
    pub model: String,
    /// A version number or an alias (required, except in a quality gate's `auto_rollout`).
    #[serde(default)]
    pub version: String,
    /// `key=value[,key=value]` labels the target devices must have; empty: every device.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Cumulative share of the targets per wave, in percent, increasing, the last 100
    /// (default 1, 10, 50, 100).
    #[serde(default = "default_waves")]
    pub waves: Vec<f64>,
    /// Minimum time a wave runs (after its installs met the success threshold) before the
    /// gates may pass it.
    #[serde(default = "default_soak_seconds")]
    pub soak_seconds: u64,
    /// Share of a wave's devices that must be installed within `install_timeout_seconds`.
    #[serde(default = "default_install_success")]
    pub install_success: f64,
    #[serde(default = "default_install_timeout_seconds")]
    pub install_timeout_seconds: u64,
    /// Share of a wave's devices whose install may fail before the wave fails.
    #[serde(default = "default_install_failure_max")]
    pub install_failure_max: f64,
    #[serde(default)]
    pub gates: HealthGates,
    /// What a failed wave does: `rollback` (default) or `pause`.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Waves (numbered from 1) that wait for `flotilla rollout approve` before they start.
    #[serde(default)]
    pub approve_before: Vec<usize>,
    /// How fast new devices are told to download.
    #[serde(default)]
    pub rate: RateLimit,
    /// Devices offline at their turn: `wait` for them (they count as pending, so the
    /// install success threshold decides) or `skip` them (left out of the wave's counts).
    #[serde(default)]
    pub offline: OfflinePolicy,
    /// The alias moved to the new version when the rollout completes (none: no alias).
    #[serde(default = "default_promote_alias")]
    pub promote_alias: Option<String>,
}

/// Canary analysis: the new version's cohort against the old version's over the same windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthGates {
    /// Error rate at most the baseline's plus this (0.01: Flagger's success rate >= 99%
    /// when the baseline has no errors).
    #[serde(default = "default_error_rate_increase")]
    pub error_rate_increase_max: f64,
    /// Latency p99 at most the baseline's times this.
    #[serde(default = "default_latency_ratio")]
    pub latency_p99_ratio_max: f64,
    /// Input features of the new cohort drifting against the old cohort's: at most this many
    /// (the model's drift thresholds decide which drift).
    #[serde(default)]
    pub input_drift_features_max: usize,
    /// Prediction outputs drifting against the old cohort's: at most this many.
    #[serde(default)]
    pub prediction_drift_max: usize,
    /// Also require no dataset drift against the version's reference profile.
    #[serde(default)]
    pub check_reference_drift: bool,
    /// Requests each cohort must have in the wave's windows before a gate can pass; below,
    /// the gate is inconclusive and the wave waits.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    Rollback,
    Pause,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OfflinePolicy {
    #[default]
    Wait,
    Skip,
}

/// Devices per minute told to install: constant, or growing by `factor` every minute up to
/// `max` (AWS IoT Jobs' exponential rollout). `devices_per_minute = 0`: no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default)]
    pub devices_per_minute: u64,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default)]
    pub max_per_minute: Option<u64>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            devices_per_minute: 0,
            factor: 1.0,
            max_per_minute: None,
        }
    }
}

fn one() -> f64 {
    1.0
}
fn default_waves() -> Vec<f64> {
    vec![1.0, 10.0, 50.0, 100.0]
}
fn default_soak_seconds() -> u64 {
    300
}
fn default_install_success() -> f64 {
    0.95
}
fn default_install_timeout_seconds() -> u64 {
    900
}
fn default_install_failure_max() -> f64 {
    0.05
}
fn default_promote_alias() -> Option<String> {
    Some("production".into())
}
fn default_error_rate_increase() -> f64 {
    0.01
}
fn default_latency_ratio() -> f64 {
    1.2
}
fn default_min_requests() -> u64 {
    1000
}

impl Default for HealthGates {
    fn default() -> Self {
        HealthGates {
            error_rate_increase_max: default_error_rate_increase(),
            latency_p99_ratio_max: default_latency_ratio(),
            input_drift_features_max: 0,
            prediction_drift_max: 0,
            check_reference_drift: false,
            min_requests: default_min_requests(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("the rollout spec does not parse: {0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(String),
}

impl RolloutSpec {
    /// A spec from JSON (the API) or TOML (files), checked.
    pub fn from_json(text: &str) -> Result<RolloutSpec, SpecError> {
        let spec: RolloutSpec =
            serde_json::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }

    pub fn from_toml(text: &str) -> Result<RolloutSpec, SpecError> {
        let spec: RolloutSpec =
            toml::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))?;
        spec.check()?;
        Ok(spec)
    }

    pub fn check(&self) -> Result<(), SpecError> {
        let invalid = |m: String| Err(SpecError::Invalid(m));
        if self.model.is_empty() || self.version.is_empty() {
            return invalid("give the model and the version (or alias) to roll out".into());
        }
        if self.waves.is_empty() {
            return invalid("give at least one wave".into());
        }
        if let Some(w) = self.waves.iter().find(|w| !(**w > 0.0 && **w <= 100.0)) {
            return invalid(format!(
                "wave {w}% is not a share of the targets: each wave is above 0 and at most 100"
            ));
        }
        if self.waves.windows(2).any(|p| p[1] <= p[0]) {
            return invalid(format!(
                "waves {:?} do not increase: each wave is a cumulative share, larger than the one before",
                self.waves
            ));
        }
        if *self.waves.last().expect("not empty") != 100.0 {
            return invalid(format!(
                "the last wave is {}%: a rollout ends at 100% of its targets",
                self.waves.last().expect("not empty")
            ));
        }
        for (name, share) in [
            ("install_success", self.install_success),
            ("install_failure_max", self.install_failure_max),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return invalid(format!("{name} = {share} is not a share between 0 and 1"));
            }
        }
        if let Some(w) = self
            .approve_before
            .iter()
            .find(|w| **w == 0 || **w > self.waves.len())
        {
            return invalid(format!(
                "approve_before names wave {w}; waves are numbered 1 to {}",
                self.waves.len()
            ));
        }
        let g = &self.gates;
        if g.error_rate_increase_max < 0.0 || g.latency_p99_ratio_max < 1.0 {
            return invalid(
                "gates: error_rate_increase_max must be at least 0 and latency_p99_ratio_max at least 1"
                    .into(),
            );
        }
        if self.rate.factor < 1.0 {
            return invalid(format!(
                "rate.factor = {} would slow down: it must be at least 1",
                self.rate.factor
            ));
        }
        Ok(())
    }

    /// This spec (a quality gate's `auto_rollout` template) for one model version, checked.
    pub fn for_version(&self, model: &str, version: u64) -> Result<RolloutSpec, SpecError> {
        let spec = RolloutSpec {
            model: model.to_owned(),
            version: version.to_string(),
            ..self.clone()
        };
        spec.check()?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Result<RolloutSpec, SpecError> {
        RolloutSpec::from_toml(&format!("model = \"iris\"\nversion = \"2\"\n{extra}"))
    }

    #[test]
    fn defaults_are_canary_waves_with_flagger_style_gates() {
        let s = spec("").unwrap();
        assert_eq!(s.waves, [1.0, 10.0, 50.0, 100.0]);
        assert_eq!(s.gates.latency_p99_ratio_max, 1.2);
        assert_eq!(s.gates.error_rate_increase_max, 0.01);
        assert_eq!(s.on_failure, OnFailure::Rollback);
        assert_eq!(s.promote_alias.as_deref(), Some("production"));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(RolloutSpec::from_json(&json).unwrap(), s);
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let refused = |extra: &str| spec(extra).unwrap_err().to_string();
        assert!(refused("colour = \"red\"").contains("unknown field"));
        assert!(refused("waves = [10, 5, 100]").contains("do not increase"));
        assert!(refused("waves = [10, 150]").contains("at most 100"));
        assert!(refused("waves = [10, 50]").contains("ends at 100%"));
        assert!(refused("waves = []").contains("at least one wave"));
        assert!(refused("install_success = 2").contains("between 0 and 1"));
        assert!(refused("approve_before = [5]").contains("numbered 1 to 4"));
        assert!(refused("selector = \"region\"").contains("key=value"));
        let template = RolloutSpec::from_json("{}").unwrap_err();
        assert!(
            template.to_string().contains("give the model"),
            "{template}"
        );
        let filled = spec("").unwrap().for_version("other", 7).unwrap();
        assert_eq!(
            (filled.model.as_str(), filled.version.as_str()),
            ("other", "7")
        );
        assert!(refused("on_failure = \"explode\"").contains("unknown variant"));
        assert!(refused("[gates]\nlatency_p99_ratio_max = 0.5").contains("at least 1"));
        assert!(
            RolloutSpec::from_json("{\"model\":\"iris\"}")
                .unwrap_err()
                .to_string()
                .contains("version")
        );
    }
}
