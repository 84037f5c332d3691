//! Scenario files (`fleet-sim/scenarios/*.toml`): the fleet, its traffic, its faults and a
//! timeline of operator actions. Paths are relative to the scenario file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// How long devices send traffic, from the first action on.
    pub duration_seconds: f64,
    /// Telemetry window length on every device.
    #[serde(default = "default_window_seconds")]
    pub window_seconds: u64,
    /// Seconds between device heartbeats (signed status).
    #[serde(default = "default_heartbeat_seconds")]
    pub heartbeat_seconds: u64,
    /// How far back the hub's drift evaluator looks (embedded hub).
    #[serde(default = "default_lookback_seconds")]
    pub drift_lookback_seconds: u64,
    pub model: ModelSpec,
    /// Input rows (CSV with a header, one column per feature); default: the model's reference.
    #[serde(default)]
    pub dataset: Option<PathBuf>,
    pub cohorts: Vec<Cohort>,
    #[serde(default)]
    pub drift: Vec<DriftInjection>,
    #[serde(default)]
    pub actions: Vec<Action>,
    /// Agent crashes: every device of the cohort is killed (its open window is lost) and
    /// started again on its state folder after `down_seconds`.
    #[serde(default)]
    pub crashes: Vec<Crash>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    pub cohort: String,
    pub at_seconds: f64,
    pub down_seconds: f64,
}

fn default_window_seconds() -> u64 {
    5
}
fn default_heartbeat_seconds() -> u64 {
    10
}
fn default_lookback_seconds() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub file: PathBuf,
    /// Training data for the reference profile.
    #[serde(default)]
    pub reference: Option<PathBuf>,
}

/// Devices that share labels, traffic and network conditions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cohort {
    pub name: String,
    pub devices: usize,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Inference requests per second, per device.
    pub requests_per_second: f64,
    #[serde(default = "default_rows")]
    pub rows_per_request: usize,
    /// Periods (seconds from the start) when the cohort's network to the hub is cut.
    #[serde(default)]
    pub offline: Vec<Period>,
}

fn default_rows() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    pub from_seconds: f64,
    pub until_seconds: f64,
}

/// From `from_seconds` on, the cohort's inputs change: `feature` is multiplied by `scale`
/// then shifted by `shift`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftInjection {
    pub cohort: String,
    pub from_seconds: f64,
    pub feature: String,
    #[serde(default)]
    pub shift: f32,
    #[serde(default = "one")]
    pub scale: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub at_seconds: f64,
    /// Sets the model at `version` (number or alias) as desired on the devices matching
    /// `selector` (empty: all).
    pub deploy: Deploy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    pub version: String,
    #[serde(default)]
    pub selector: String,
}

impl Scenario {
    /// Reads, resolves relative paths against the file's folder, and checks consistency.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let mut scenario: Scenario = flotilla_common::config_file::load_toml(path)?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = folder.join(&*p);
            }
        };
        resolve(&mut scenario.model.file);
        if let Some(r) = scenario.model.reference.as_mut() {
            resolve(r);
        }
        if let Some(d) = scenario.dataset.as_mut() {
            resolve(d);
        }
        scenario
            .check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(scenario)
    }

    fn check(&self) -> Result<(), String> {
        if self.cohorts.is_empty() || self.cohorts.iter().all(|c| c.devices == 0) {
            return Err("no devices: give at least one cohort with devices".into());
        }
        if self.dataset.is_none() && self.model.reference.is_none() {
            return Err("give a dataset (or a model reference) to draw inputs from".into());
        }
        for crash in &self.crashes {
            if !self.cohorts.iter().any(|c| c.name == crash.cohort) {
                return Err(format!(
                    "crash names cohort {:?}, which does not exist",
                    crash.cohort
                ));
            }
        }
        for drift in &self.drift {
            if !self.cohorts.iter().any(|c| c.name == drift.cohort) {
                return Err(format!(
                    "drift names cohort {:?}, which does not exist",
                    drift.cohort
                ));
            }
        }
        for cohort in &self.cohorts {
            if cohort.requests_per_second <= 0.0 || cohort.rows_per_request == 0 {
                return Err(format!(
                    "cohort {:?}: requests_per_second and rows_per_request must be positive",
                    cohort.name
                ));
            }
            if let Some(p) = cohort
                .offline
                .iter()
                .find(|p| p.until_seconds <= p.from_seconds)
            {
                return Err(format!(
                    "cohort {:?}: offline period {}..{} is empty",
                    cohort.name, p.from_seconds, p.until_seconds
                ));
            }
        }
        Ok(())
    }

    pub fn device_count(&self) -> usize {
        self.cohorts.iter().map(|c| c.devices).sum()
    }

    pub fn dataset_path(&self) -> &Path {
        self.dataset
            .as_deref()
            .or(self.model.reference.as_deref())
            .expect("checked at load")
    }
}
