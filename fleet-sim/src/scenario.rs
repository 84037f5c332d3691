//! Scenario files (`fleet-sim/scenarios/*.toml`): the fleet, its traffic, its faults and a
//! timeline of operator actions. Paths are relative to the scenario file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The file it was read from (worker processes read it again).
    #[serde(skip)]
    pub path: PathBuf,
    pub name: String,
    /// How long devices send traffic, from the first action on.
    pub duration_seconds: f64,
    /// Telemetry window length on every device.
    #[serde(default = "default_window_seconds")]
    pub window_seconds: u64,
    /// Seconds between device heartbeats (signed status).
    #[serde(default = "default_heartbeat_seconds")]
    pub heartbeat_seconds: u64,
    /// Each device sends a new window after its own random delay below this (the agent's
    /// `upload_spread_seconds`; default 0: the fleet uploads when windows close).
    #[serde(default)]
    pub upload_spread_seconds: f64,
    /// How far back the hub's drift evaluator looks (embedded hub).
    #[serde(default = "default_lookback_seconds")]
    pub drift_lookback_seconds: u64,
    pub model: ModelSpec,
    /// How devices run inference (default: real ONNX Runtime sessions shared per process).
    #[serde(default)]
    pub inference: Inference,
    /// Processes the fleet is spread over (default 1, in the simulator's own process). One
    /// process holds at most a few thousand devices: each device keeps a socket and SQLite
    /// files open, and a process may open 20,000 files here.
    #[serde(default = "default_processes")]
    pub processes: usize,
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

fn default_processes() -> usize {
    1
}

/// `[inference]`: what answers the simulated devices' requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inference {
    /// `shared`: real ONNX Runtime sessions, one set per process for all devices (default);
    /// `onnx`: each device its own sessions, as on a real device (memory per device grows by
    /// the model's size); `cost`: a declared cost model, no inference (latency below,
    /// synthetic outputs of the model's signature).
    #[serde(default = "default_engine")]
    pub engine: String,
    /// The cost model's latency per request, in milliseconds.
    #[serde(default)]
    pub latency_ms: f64,
    /// With `latency_ms`, latency is drawn uniformly between the two.
    #[serde(default)]
    pub latency_max_ms: Option<f64>,
    /// Shared sessions per process (`shared` and `cost`), default 2.
    #[serde(default = "default_shared_sessions")]
    pub sessions: usize,
}

fn default_engine() -> String {
    "shared".into()
}
fn default_shared_sessions() -> usize {
    2
}

impl Default for Inference {
    fn default() -> Self {
        Inference {
            engine: default_engine(),
            latency_ms: 0.0,
            latency_max_ms: None,
            sessions: default_shared_sessions(),
        }
    }
}

impl Inference {
    pub fn engine(&self) -> Result<flotilla_runtime::Engine, String> {
        use flotilla_runtime::{CostModel, Engine};
        use std::time::Duration;
        let max = self.latency_max_ms.unwrap_or(self.latency_ms);
        if !(self.latency_ms >= 0.0 && max >= self.latency_ms && max.is_finite()) {
            return Err(format!(
                "inference latency {}..{max} ms is not a range",
                self.latency_ms
            ));
        }
        match self.engine.as_str() {
            "shared" => Ok(Engine::SharedOnnx),
            "onnx" => Ok(Engine::Onnx),
            "cost" => Ok(Engine::Cost(CostModel {
                min_latency: Duration::from_secs_f64(self.latency_ms / 1000.0),
                max_latency: Duration::from_secs_f64(max / 1000.0),
            })),
            other => Err(format!(
                "inference engine {other:?} is not one of shared, onnx, cost"
            )),
        }
    }
}

/// A cohort's network to the hub's broker, applied by its proxy to every byte each way.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkProfile {
    /// Added one-way delay per chunk of data, in milliseconds.
    #[serde(default)]
    pub latency_ms: f64,
    /// Each connection's throughput cap each way, in KiB/s (0: none).
    #[serde(default)]
    pub bandwidth_kib_per_second: f64,
    /// Share of chunks "lost": TCP hides loss as a retransmission, so a lost chunk arrives
    /// after an extra 200 ms (Linux's minimum retransmission timeout).
    #[serde(default)]
    pub loss: f64,
}

impl NetworkProfile {
    pub fn is_shaped(&self) -> bool {
        *self != NetworkProfile::default()
    }
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
    /// The script that makes `file` when it is too big to keep in the repository.
    #[serde(default)]
    pub generated_by: Option<PathBuf>,
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
    /// Latency, bandwidth and loss on the way to the broker.
    #[serde(default)]
    pub network: NetworkProfile,
    /// The telemetry spool's size on these devices, in KiB (default 64 MiB): a small one
    /// stands for a full disk, the oldest windows are dropped and counted.
    #[serde(default)]
    pub spool_kib: Option<u64>,
    /// Share of downloads damaged on arrival (the artifact check must refuse them).
    #[serde(default)]
    pub corrupt_download_rate: f64,
    /// Share of installs whose model file is destroyed after the check (loading must fail).
    #[serde(default)]
    pub install_failure_rate: f64,
    /// How far the cohort's device clocks are off, in seconds (positive: ahead). Window
    /// times, expiry checks and report times on those devices use the skewed clock; the hub
    /// refuses windows more than a day in the future (counted by reason in the report).
    #[serde(default)]
    pub clock_skew_seconds: f64,
    /// Requests per minute each device captures (inputs and outputs) for the hub's
    /// captures API; none by default.
    #[serde(default)]
    pub capture_per_minute: Option<u32>,
}

impl Cohort {
    /// Whether its devices reach the broker through a proxy (to cut or shape the network).
    pub fn needs_proxy(&self) -> bool {
        !self.offline.is_empty() || self.network.is_shaped()
    }
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
/// then shifted by `shift`. Without `from_seconds` the drift starts when the driver says
/// (`Fleet::start_drift`, the demo).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftInjection {
    pub cohort: String,
    #[serde(default = "never")]
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

fn never() -> f64 {
    f64::INFINITY
}

/// One operator action: exactly one of `deploy`, `push`, `rollout`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub at_seconds: f64,
    /// Sets the model at `version` (number or alias) as desired on the devices matching
    /// `selector` (empty: all).
    #[serde(default)]
    pub deploy: Option<Deploy>,
    /// Pushes this file as the model's next version.
    #[serde(default)]
    pub push: Option<PathBuf>,
    /// Starts a rollout: a rollout spec (docs/rollouts.md) without `model`, which is the
    /// scenario's.
    #[serde(default)]
    pub rollout: Option<flotilla_api::rollouts::RolloutSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    pub version: String,
    #[serde(default)]
    pub selector: flotilla_api::LabelSelector,
}

impl Scenario {
    /// Reads, resolves relative paths against the file's folder, and checks consistency.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let mut scenario: Scenario = flotilla_common::config_file::load_toml(path)?;
        scenario.path = path.to_owned();
        let folder = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = folder.join(&*p);
            }
        };
        resolve(&mut scenario.model.file);
        if let Some(script) = scenario.model.generated_by.as_mut() {
            resolve(script);
            if !scenario.model.file.exists() {
                anyhow::bail!(
                    "{}: model file {} is not made yet; make it with: .cache/venv/bin/python {}",
                    path.display(),
                    scenario.model.file.display(),
                    script.display()
                );
            }
        }
        if let Some(r) = scenario.model.reference.as_mut() {
            resolve(r);
        }
        if let Some(d) = scenario.dataset.as_mut() {
            resolve(d);
        }
        for action in &mut scenario.actions {
            if let Some(file) = action.push.as_mut() {
                resolve(file);
            }
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
        self.inference.engine()?;
        for action in &self.actions {
            let kinds = [
                action.deploy.is_some(),
                action.push.is_some(),
                action.rollout.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(format!(
                    "the action at {} s must do exactly one of deploy, push, rollout",
                    action.at_seconds
                ));
            }
        }
        if self.processes == 0 || self.processes > 64 {
            return Err(format!("processes = {} must be 1..=64", self.processes));
        }
        for cohort in &self.cohorts {
            let n = &cohort.network;
            for (what, rate) in [
                ("corrupt_download_rate", cohort.corrupt_download_rate),
                ("install_failure_rate", cohort.install_failure_rate),
                ("network.loss", n.loss),
            ] {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!(
                        "cohort {:?}: {what} = {rate} is not between 0 and 1",
                        cohort.name
                    ));
                }
            }
            if n.latency_ms < 0.0 || n.bandwidth_kib_per_second < 0.0 {
                return Err(format!(
                    "cohort {:?}: network latency and bandwidth cannot be negative",
                    cohort.name
                ));
            }
            if cohort.spool_kib == Some(0) {
                return Err(format!(
                    "cohort {:?}: spool_kib must be positive",
                    cohort.name
                ));
            }
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

    /// The cohort of device `index` (devices are numbered cohort by cohort).
    pub fn cohort_of(&self, index: usize) -> usize {
        let mut end = 0;
        for (c, cohort) in self.cohorts.iter().enumerate() {
            end += cohort.devices;
            if index < end {
                return c;
            }
        }
        self.cohorts.len() - 1
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
