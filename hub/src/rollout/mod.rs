//! Rollouts: a model version reaching its target devices in waves, each judged on installs
//! and on how the new version behaves on the devices against the old one, with automatic
//! rollback. `spec` (what the operator asks), `plan` (wave membership, rate), `gates`
//! (canary analysis) and `controller` (the state machine) are pure; `Rollouts` here is the
//! I/O around them: it reads the inventory and the telemetry, carries out the controller's
//! actions (signed desired states published over MQTT, alias moves, audit events) and
//! persists the controller's state after every step.

pub mod controller;
pub mod gates;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use flotilla_api::rollouts::RolloutView;
use flotilla_proto::control::InstallState;

use crate::fleet::{Fleet, FleetError};
use crate::registry::{Registry, RegistryError};
use crate::store::{RolloutRecord, StoreError};
use crate::telemetry::compare;
use crate::telemetry::{Against, SliceQuery, Telemetry, TelemetryError};
use crate::transport::mqtt::HubMqtt;
use controller::{Action, Context, Input, Phase, RolloutState, WaveProgress, step};
use flotilla_api::rollouts::{RolloutSpec, SpecError};
use gates::{CohortFigures, GateInputs, GateResult};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error(
        "model {model:?} already has rollout {id} in progress ({phase}); finish, abort or roll it back first"
    )]
    Concurrent {
        model: String,
        id: String,
        phase: String,
    },
    #[error("no enrolled device matches selector {0:?}: a rollout needs targets")]
    NoTargets(String),
    #[error("no rollout {0}; flotilla rollout list shows them")]
    Unknown(String),
    #[error("{0}")]
    Refused(#[from] controller::Refused),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// A target device and the version of the model it was told to run before the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub device: String,
    pub previous: Option<u64>,
}

/// Everything stored for one rollout.
#[derive(Debug, Clone)]
struct Loaded {
    id: String,
    version: u64,
    spec: RolloutSpec,
    /// In wave order.
    targets: Vec<Target>,
    state: RolloutState,
    created: i64,
    updated: i64,
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("rollout record: {e}"))
}

impl Loaded {
    /// The targets told to install so far (a prefix of the wave order).
    fn told(&self) -> &[Target] {
        &self.targets[..self.state.told.min(self.targets.len())]
    }

    fn from_record(record: &RolloutRecord) -> Result<Loaded, StoreError> {
        Ok(Loaded {
            id: record.id.clone(),
            version: record.version,
            spec: serde_json::from_str(&record.spec).map_err(corrupt)?,
            targets: serde_json::from_str(&record.targets).map_err(corrupt)?,
            state: serde_json::from_str(&record.state).map_err(corrupt)?,
            created: record.created,
            updated: record.updated,
        })
    }
}

#[derive(Debug)]
pub struct Rollouts {
    registry: Arc<Registry>,
    fleet: Arc<Fleet>,
    telemetry: Arc<Telemetry>,
    mqtt: Option<HubMqtt>,
    /// One step at a time: ticks and operator commands never interleave on a rollout.
    stepping: tokio::sync::Mutex<()>,
}

impl Rollouts {
    pub fn new(
        registry: Arc<Registry>,
        fleet: Arc<Fleet>,
        telemetry: Arc<Telemetry>,
        mqtt: Option<HubMqtt>,
    ) -> Rollouts {
        Rollouts {
            registry,
            fleet,
            telemetry,
            mqtt,
            stepping: tokio::sync::Mutex::new(()),
        }
    }

    /// Checks the spec, freezes the targets and their previous versions, stores the rollout
    /// and takes its first step (wave 1 starts unless it waits for approval).
    pub async fn create(
        self: &Arc<Self>,
        spec: RolloutSpec,
        actor: &str,
    ) -> Result<RolloutView, RolloutError> {
        let _one = self.stepping.lock().await;
        spec.check()?;
        let record = self.registry.resolve(&spec.model, &spec.version)?;
        if record.retired.is_some() {
            return Err(RegistryError::Retired {
                model: spec.model.clone(),
                version: record.version,
            }
            .into());
        }
        let store = self.registry.store();
        if let Some(active) = store
            .rollouts()?
            .into_iter()
            .filter(|r| r.model == spec.model)
            .map(|r| Loaded::from_record(&r))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .find(|r| r.state.phase.is_active())
        {
            return Err(RolloutError::Concurrent {
                model: spec.model.clone(),
                id: active.id,
                phase: active.state.phase.name().to_owned(),
            });
        }
        let devices: Vec<String> = store
            .devices()?
            .into_iter()
            .filter(|d| spec.selector.matches(&d.labels))
            .map(|d| d.id)
            .collect();
        if devices.is_empty() {
            return Err(RolloutError::NoTargets(spec.selector.to_string()));
        }
        let now = self.registry.now();
        let mut random = [0u8; 4];
        getrandom::fill(&mut random).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let id = format!("{}-{}-{}", spec.model, record.version, hex::encode(random));
        let mut targets = Vec::with_capacity(devices.len());
        for device in plan::wave_order(&id, &devices) {
            let previous = self.fleet.desired_version(&device, &spec.model)?;
            targets.push(Target { device, previous });
        }
        let state = RolloutState::new();
        store.insert_rollout(&RolloutRecord {
            id: id.clone(),
            model: spec.model.clone(),
            version: record.version,
            spec: serde_json::to_string(&spec).expect("specs serialize"),
            targets: serde_json::to_string(&targets).expect("targets serialize"),
            state: serde_json::to_string(&state).expect("states serialize"),
            phase: state.phase.name().into(),
            created: now,
            updated: now,
        })?;
        let loaded = Loaded {
            id: id.clone(),
            version: record.version,
            spec,
            targets,
            state,
            created: now,
            updated: now,
        };
        self.record(
            &loaded,
            actor,
            "rollout.created",
            format!(
                "{} version {} to {} devices in waves {:?}",
                loaded.spec.model,
                loaded.version,
                loaded.targets.len(),
                loaded.spec.waves
            ),
            now,
        )?;
        let (input, mut loaded) = self.observe_off_thread(loaded, now).await?;
        self.apply_step(&mut loaded, &input, actor, now).await?;
        self.view(&loaded)
    }

    /// `observe` on the blocking pool: it reads the inventory and merges telemetry windows,
    /// which must not hold up the async workers (devices' traffic shares them in fleet-sim).
    async fn observe_off_thread(
        self: &Arc<Self>,
        loaded: Loaded,
        now: i64,
    ) -> Result<(Input, Loaded), RolloutError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let input = this.observe(&loaded, now)?;
            Ok((input, loaded))
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("rollout observation failed: {e}")))?
    }

    /// An operator's command on a rollout.
    pub async fn command(
        self: &Arc<Self>,
        id: &str,
        input: Input,
        actor: &str,
    ) -> Result<RolloutView, RolloutError> {
        let _one = self.stepping.lock().await;
        let mut loaded = self.load(id)?;
        let now = self.registry.now();
        self.apply_step(&mut loaded, &input, actor, now).await?;
        self.view(&loaded)
    }

    /// One controller step for every active rollout; returns how many stepped. Errors are
    /// logged per rollout so one broken rollout does not stop the others.
    pub async fn tick(self: &Arc<Self>) -> usize {
        let _one = self.stepping.lock().await;
        let records = match self.registry.store().rollouts() {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "cannot read rollouts");
                return 0;
            }
        };
        let mut stepped = 0;
        for record in records {
            let outcome = async {
                let loaded = Loaded::from_record(&record)?;
                if !loaded.state.phase.is_active() {
                    return Ok::<bool, RolloutError>(false);
                }
                let now = self.registry.now();
                let (input, mut loaded) = self.observe_off_thread(loaded, now).await?;
                self.apply_step(&mut loaded, &input, "rollout-controller", now)
                    .await?;
                Ok(true)
            }
            .await;
            match outcome {
                Ok(true) => stepped += 1,
                Ok(false) => {}
                Err(error) => tracing::error!(rollout = %record.id, %error, "rollout step failed"),
            }
        }
        stepped
    }

    pub fn get(&self, id: &str) -> Result<RolloutView, RolloutError> {
        self.view(&self.load(id)?)
    }

    pub fn list(&self) -> Result<Vec<RolloutView>, RolloutError> {
        self.registry
            .store()
            .rollouts()?
            .iter()
            .map(|r| self.view(&Loaded::from_record(r)?))
            .collect()
    }

    fn load(&self, id: &str) -> Result<Loaded, RolloutError> {
        let record = self
            .registry
            .store()
            .rollout(id)?
            .ok_or_else(|| RolloutError::Unknown(id.to_owned()))?;
        Ok(Loaded::from_record(&record)?)
    }

    async fn apply_step(
        &self,
        loaded: &mut Loaded,
        input: &Input,
        actor: &str,
        now: i64,
    ) -> Result<(), RolloutError> {
        let ctx = Context {
            spec: &loaded.spec,
            targets: loaded.targets.len(),
            now,
        };
        let told_before = loaded.state.told;
        let (next, actions) = step(&ctx, &loaded.state, input)?;
        // The state is saved before the actions run: a hub that dies in between re-runs
        // the same actions on restart (publishing a desired state twice is harmless).
        loaded.state = next;
        loaded.updated = now;
        self.save(loaded)?;
        for action in actions {
            match action {
                Action::Tell { upto } => {
                    let devices: Vec<String> = loaded.targets[told_before.min(upto)..upto]
                        .iter()
                        .map(|t| t.device.clone())
                        .collect();
                    // Signing and storing thousands of desired states is blocking work.
                    let (fleet, model, version) = (
                        self.fleet.clone(),
                        loaded.spec.model.clone(),
                        loaded.version,
                    );
                    let publications =
                        off_the_runtime(move || fleet.deploy_to(&model, version, &devices)).await?;
                    self.publish(&publications).await;
                }
                Action::RollBack => {
                    let previous: Vec<(String, Option<u64>)> = loaded
                        .told()
                        .iter()
                        .map(|t| (t.device.clone(), t.previous))
                        .collect();
                    let (fleet, model) = (self.fleet.clone(), loaded.spec.model.clone());
                    let publications =
                        off_the_runtime(move || fleet.restore_previous(&model, &previous)).await?;
                    self.publish(&publications).await;
                }
                Action::MoveAlias => {
                    if let Some(alias) = &loaded.spec.promote_alias {
                        self.registry.set_alias(
                            &loaded.spec.model,
                            alias,
                            &loaded.version.to_string(),
                            actor,
                        )?;
                        self.record(
                            loaded,
                            actor,
                            "rollout.alias_moved",
                            format!("{alias} -> version {}", loaded.version),
                            now,
                        )?;
                    }
                }
                Action::Record { kind, detail } => {
                    self.record(loaded, actor, &kind, detail, now)?
                }
            }
        }
        Ok(())
    }

    async fn publish(&self, publications: &[crate::fleet::Publication]) {
        if let Some(mqtt) = &self.mqtt {
            mqtt.publish_desired(publications).await;
        }
    }

    fn save(&self, loaded: &Loaded) -> Result<(), StoreError> {
        self.registry.store().update_rollout(
            &loaded.id,
            &serde_json::to_string(&loaded.state).expect("states serialize"),
            loaded.state.phase.name(),
            loaded.updated,
        )
    }

    /// An audit log line and an event (`flotilla events`), both with the reason.
    fn record(
        &self,
        loaded: &Loaded,
        actor: &str,
        kind: &str,
        detail: String,
        now: i64,
    ) -> Result<(), RolloutError> {
        tracing::info!(rollout = %loaded.id, kind, %detail, "rollout");
        self.registry
            .store()
            .audit(now, actor, kind, &format!("{}: {detail}", loaded.id))?;
        self.telemetry.store.add_event(
            now,
            kind,
            &loaded.spec.model,
            Some(loaded.version),
            &serde_json::json!({"rollout": loaded.id, "detail": detail, "wave": loaded.state.wave, "actor": actor}),
        )?;
        Ok(())
    }

    /// Every device by id, as the inventory shows it now.
    fn inventory(&self) -> Result<BTreeMap<String, crate::store::DeviceRecord>, StoreError> {
        Ok(self
            .registry
            .store()
            .devices()?
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect())
    }

    /// The tick input: the wave's install progress from the inventory, the gates when the
    /// wave has soaked, and whether a rollback is done.
    fn observe(&self, loaded: &Loaded, now: i64) -> Result<Input, RolloutError> {
        let devices = self.inventory()?;
        let model = &loaded.spec.model;
        let told = loaded.told();
        let mut progress = WaveProgress {
            told: told.len(),
            ..WaveProgress::default()
        };
        let mut installed_devices = BTreeSet::new();
        for target in told {
            let Some(device) = devices.get(&target.device) else {
                continue;
            };
            if device.serving.get(model) == Some(&loaded.version) {
                progress.installed += 1;
                installed_devices.insert(target.device.clone());
            } else if failed_install(device, model, loaded.version) {
                progress.failed += 1;
            } else if !device.online {
                progress.offline_pending += 1;
            }
        }
        let rolled_back = loaded.state.phase == Phase::RollingBack
            && told.iter().all(|t| {
                let Some(device) = devices.get(&t.device) else {
                    return true;
                };
                match t.previous {
                    // Offline devices get the rollback when they come back (retained).
                    Some(previous) => {
                        device.serving.get(model) == Some(&previous) || !device.online
                    }
                    None => true,
                }
            });
        let soaked = loaded.state.phase == Phase::Running
            && loaded
                .state
                .installs_met_at
                .is_some_and(|at| now - at >= loaded.spec.soak_seconds as i64);
        let gates = if soaked {
            Some(self.gates(loaded, &installed_devices)?)
        } else {
            None
        };
        Ok(Input::Tick {
            progress,
            gates,
            rolled_back,
        })
    }

    /// Canary analysis: the wave's installed devices on the new version since their soak
    /// began, against the old version's cohort under the same selector.
    fn gates(
        &self,
        loaded: &Loaded,
        installed: &BTreeSet<String>,
    ) -> Result<Vec<GateResult>, RolloutError> {
        let spec = &loaded.spec;
        let selector = spec.selector.clone();
        let since_s = loaded.state.installs_met_at.unwrap_or(0);
        let new_query = SliceQuery {
            model: spec.model.clone(),
            version: Some(loaded.version),
            selector: selector.clone(),
            devices: Some(installed.clone()),
            since_ms: Some(since_s * 1000),
            until_ms: None,
        };
        let new_slice = self.telemetry.slice(&new_query)?;
        let figures = |slice: &crate::telemetry::SliceSummary| {
            let health = slice.health();
            CohortFigures {
                devices: health.devices,
                requests: health.requests,
                errors: health.errors,
                latency_p99_ms: health.latency_ms_p99,
            }
        };
        let old_version = previous_version(&loaded.targets, loaded.version);
        let mut inputs = GateInputs {
            new: figures(&new_slice),
            ..GateInputs::default()
        };
        if let Some(old) = old_version {
            // The old cohort over the same windows; when few devices still run it (late
            // waves), reaching back to one soak before the rollout started.
            let mut old_query = SliceQuery {
                model: spec.model.clone(),
                version: Some(old),
                selector,
                devices: None,
                since_ms: Some(since_s * 1000),
                until_ms: None,
            };
            let mut old_slice = self.telemetry.slice(&old_query)?;
            if old_slice.requests < spec.gates.min_requests {
                let started = loaded.state.started_at.unwrap_or(since_s);
                old_query.since_ms = Some((started - spec.soak_seconds as i64) * 1000);
                old_slice = self.telemetry.slice(&old_query)?;
            }
            inputs.baseline = Some(figures(&old_slice));
            let thresholds = self.telemetry.thresholds(&spec.model)?;
            let verdict = |c: crate::telemetry::Comparison| {
                let judged = c.features.iter().any(|f| f.drifted.is_some());
                judged.then_some(c.drifted_features)
            };
            inputs.input_drifted = verdict(compare(
                &old_slice.features,
                &new_slice.features,
                &thresholds,
            ));
            inputs.prediction_drifted = verdict(compare(
                &old_slice.predictions,
                &new_slice.predictions,
                &thresholds,
            ));
        }
        if spec.gates.check_reference_drift {
            inputs.reference_dataset_drift = self
                .telemetry
                .compare_slice(&new_query, &new_slice, &Against::Reference)
                .ok()
                .and_then(|r| r.dataset_drift);
        }
        Ok(gates::evaluate(&spec.gates, &inputs))
    }

    fn view(&self, loaded: &Loaded) -> Result<RolloutView, RolloutError> {
        let devices = self.inventory()?;
        let model = &loaded.spec.model;
        let told = loaded.told();
        let count = |pick: &dyn Fn(&Target, &crate::store::DeviceRecord) -> bool| {
            told.iter()
                .filter(|t| devices.get(&t.device).is_some_and(|d| pick(t, d)))
                .count()
        };
        Ok(RolloutView {
            id: loaded.id.clone(),
            model: model.clone(),
            version: loaded.version,
            phase: loaded.state.phase,
            wave: loaded.state.wave,
            waves: loaded.spec.waves.clone(),
            targets: loaded.targets.len(),
            wave_sizes: (1..=loaded.spec.waves.len())
                .map(|w| plan::wave_size(&loaded.spec.waves, w, loaded.targets.len()))
                .collect(),
            told: told.len(),
            installed: count(&|_, d| d.serving.get(model) == Some(&loaded.version)),
            failed: count(&|_, d| failed_install(d, model, loaded.version)),
            restored: count(&|t, d| {
                t.previous.is_some() && d.serving.get(model) == t.previous.as_ref()
            }),
            reason: loaded.state.reason.clone(),
            gates: loaded.state.gates.clone(),
            started_at: loaded.state.started_at,
            wave_started_at: loaded.state.wave_started_at,
            installs_met_at: loaded.state.installs_met_at,
            spec: loaded.spec.clone(),
            created: loaded.created,
            updated: loaded.updated,
        })
    }
}

/// Runs blocking fleet work on tokio's blocking pool (on any runtime flavour, paused test
/// time included); a panic there goes on here.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FleetError> + Send + 'static,
) -> Result<T, FleetError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(failed) => std::panic::resume_unwind(failed.into_panic()),
    }
}

/// Whether the device's last outcome for this model version is a failure.
fn failed_install(device: &crate::store::DeviceRecord, model: &str, version: u64) -> bool {
    device
        .last_outcomes
        .iter()
        .any(|o| o.model == model && o.version == version && o.state == InstallState::Failed)
}

/// The version most targets ran before (the old cohort), if any.
fn previous_version(targets: &[Target], new: u64) -> Option<u64> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for t in targets {
        if let Some(v) = t.previous.filter(|v| *v != new) {
            *counts.entry(v).or_default() += 1;
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(v, _)| v)
}
