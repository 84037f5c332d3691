//! Fleet telemetry on the hub: ingest of device windows, slices merged into drift and health
//! reports, reference profiles, and the drift evaluator that raises alert events and keeps
//! the `/metrics` gauges. `report` is the pure part; this module reads the stores.

mod alerts;
mod ingest;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use flotilla_common::telemetry::{NamedProfile, decode_compressed, decode_reference};
use flotilla_proto::trust::{Envelope, ModelManifest};

pub use alerts::{DriftEvaluator, EvaluatorSettings};
pub use ingest::{
    IngestOutcome, MAX_WINDOW_AGE_MS, Rejection, TelemetryIngest, TelemetryQueue,
    start_ingest_thread,
};
pub use report::{Comparison, SliceSummary, compare};

use crate::store::{RegistryStore, StoreError, TelemetryStore, WindowFilter};
use flotilla_api::LabelSelector;
use flotilla_api::telemetry::{DriftReport, ModelThresholds, VersionHealth};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

/// Which part of the fleet a report covers.
#[derive(Debug, Clone, Default)]
pub struct SliceQuery {
    pub model: String,
    pub version: Option<u64>,
    /// The labels every device must have.
    pub selector: LabelSelector,
    /// Only these devices (when given).
    pub devices: Option<BTreeSet<String>>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// What a slice is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Against {
    /// The version's reference profile (training data).
    Reference,
    /// The same slice on another version of the model.
    Version(u64),
}

#[derive(Debug)]
pub struct Telemetry {
    pub store: Arc<TelemetryStore>,
    registry: Arc<dyn RegistryStore>,
}

impl Telemetry {
    pub fn new(store: Arc<TelemetryStore>, registry: Arc<dyn RegistryStore>) -> Telemetry {
        Telemetry { store, registry }
    }

    /// Merges the windows of a slice. Windows that no longer decode are counted as
    /// unmergeable rather than failing the report.
    pub fn slice(&self, query: &SliceQuery) -> Result<SliceSummary, TelemetryError> {
        let allowed: Option<BTreeSet<String>> = if query.selector.is_empty() {
            None
        } else {
            Some(
                self.registry
                    .devices()?
                    .into_iter()
                    .filter(|d| query.selector.matches(&d.labels))
                    .map(|d| d.id)
                    .collect(),
            )
        };
        let filter = WindowFilter {
            model: query.model.clone(),
            version: query.version,
            since_ms: query.since_ms,
            until_ms: query.until_ms,
        };
        let mut summary = SliceSummary::default();
        self.store.for_each_window(&filter, &mut |window| {
            let wanted = allowed
                .as_ref()
                .is_none_or(|a| a.contains(&window.device_id))
                && query
                    .devices
                    .as_ref()
                    .is_none_or(|d| d.contains(&window.device_id));
            if !wanted {
                return;
            }
            match decode_compressed(&window.batch) {
                Ok(batch) => summary.add(&batch),
                Err(_) => summary.unmergeable += 1,
            }
        })?;
        Ok(summary)
    }

    /// The windows of a version over a time range, merged per device (one pass). Windows
    /// that do not decode are left out.
    pub fn slices_by_device(
        &self,
        model: &str,
        version: u64,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<BTreeMap<String, SliceSummary>, TelemetryError> {
        let filter = WindowFilter {
            model: model.to_owned(),
            version: Some(version),
            since_ms: Some(since_ms),
            until_ms: Some(until_ms),
        };
        let mut slices: BTreeMap<String, SliceSummary> = BTreeMap::new();
        self.store.for_each_window(&filter, &mut |window| {
            let slice = slices.entry(window.device_id.clone()).or_default();
            match decode_compressed(&window.batch) {
                Ok(batch) => slice.add(&batch),
                Err(_) => slice.unmergeable += 1,
            }
        })?;
        Ok(slices)
    }

    pub fn reference(
        &self,
        model: &str,
        version: u64,
    ) -> Result<Option<(u64, Vec<NamedProfile>)>, TelemetryError> {
        let Some(bytes) = self.store.reference(model, version)? else {
            return Ok(None);
        };
        decode_reference(&bytes)
            .map(Some)
            .map_err(|e| TelemetryError::Invalid(format!("stored reference does not decode: {e}")))
    }

    pub fn thresholds(&self, model: &str) -> Result<ModelThresholds, TelemetryError> {
        match self.store.thresholds(model)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| TelemetryError::Invalid(format!("stored thresholds: {e}"))),
            None => Ok(ModelThresholds::default()),
        }
    }

    pub fn set_thresholds(
        &self,
        model: &str,
        thresholds: &ModelThresholds,
    ) -> Result<(), TelemetryError> {
        Ok(self.store.set_thresholds(
            model,
            &serde_json::to_string(thresholds).expect("thresholds serialize"),
        )?)
    }

    /// Stores a reference profile set for a version after checking it decodes and names the
    /// version's features.
    pub fn set_reference(
        &self,
        model: &str,
        version: u64,
        bytes: &[u8],
        now: i64,
    ) -> Result<Vec<String>, TelemetryError> {
        let record = self.registry.version(model, version)?.ok_or_else(|| {
            TelemetryError::NotFound(format!("model {model:?} has no version {version}"))
        })?;
        let (rows, profiles) = decode_reference(bytes)
            .map_err(|e| TelemetryError::Invalid(format!("not a reference profile set: {e}")))?;
        let envelope: Envelope = serde_json::from_str(&record.manifest)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let manifest: ModelManifest = serde_json::from_str(&envelope.payload)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let names: Vec<String> = profiles.iter().map(|p| p.name.clone()).collect();
        if let Some(map) = &manifest.features
            && let Some(missing) = map.features.iter().find(|f| !names.contains(f))
        {
            {
                return Err(TelemetryError::Invalid(format!(
                    "the reference has no feature {missing:?}; version {version} maps {:?} and the reference has {names:?}",
                    map.features
                )));
            }
        }
        self.store.set_reference(model, version, rows, bytes, now)?;
        Ok(names)
    }

    /// A slice compared with the version's reference or with another version's cohort.
    pub fn drift_report(
        &self,
        query: &SliceQuery,
        against: &Against,
    ) -> Result<DriftReport, TelemetryError> {
        let current = self.slice(query)?;
        self.compare_slice(query, &current, against)
    }

    /// `current` (the merged `query`) compared with the version's reference, or with version
    /// N's cohort: the same time range and label selector on version N, over whichever
    /// devices ran N (a device list narrows only `current`: cohorts are different devices).
    pub fn compare_slice(
        &self,
        query: &SliceQuery,
        current: &SliceSummary,
        against: &Against,
    ) -> Result<DriftReport, TelemetryError> {
        let version = query
            .version
            .ok_or_else(|| TelemetryError::Invalid("a drift report needs a version".into()))?;
        let thresholds = self.thresholds(&query.model)?;
        let (label, reference_features, reference_predictions) = match against {
            Against::Reference => {
                let (_, profiles) = self.reference(&query.model, version)?.ok_or_else(|| {
                    TelemetryError::NotFound(format!(
                        "model {:?} version {version} has no reference profile; push it with --reference FILE",
                        query.model
                    ))
                })?;
                ("reference".to_owned(), profiles, Vec::new())
            }
            Against::Version(other) => {
                let mut baseline_query = query.clone();
                baseline_query.version = Some(*other);
                baseline_query.devices = None;
                let baseline = self.slice(&baseline_query)?;
                (
                    format!("version:{other}"),
                    baseline.features,
                    baseline.predictions,
                )
            }
        };
        let features = compare(&reference_features, &current.features, &thresholds);
        let predictions = compare(&reference_predictions, &current.predictions, &thresholds);
        Ok(DriftReport {
            model: query.model.clone(),
            version,
            against: label,
            devices: current.devices.len() as u64,
            windows: current.windows,
            requests: current.requests,
            since_ms: query.since_ms,
            until_ms: query.until_ms,
            features: features.features,
            predictions: if matches!(against, Against::Reference) {
                Vec::new()
            } else {
                predictions.features
            },
            drifted_features: features.drifted_features,
            dataset_drift: features.dataset_drift,
            spool_dropped: current.spool_dropped,
            spool_lost: current.spool_lost,
            unmergeable_windows: current.unmergeable,
        })
    }

    /// Health per version of a model over the slice (the slice's version is ignored).
    pub fn health(
        &self,
        query: &SliceQuery,
    ) -> Result<BTreeMap<u64, VersionHealth>, TelemetryError> {
        let versions: Vec<u64> = self
            .registry
            .versions(&query.model)?
            .iter()
            .map(|v| v.version)
            .collect();
        if versions.is_empty() {
            return Err(TelemetryError::NotFound(format!(
                "unknown model {:?}",
                query.model
            )));
        }
        let mut out = BTreeMap::new();
        for version in versions {
            let mut q = query.clone();
            q.version = Some(version);
            let slice = self.slice(&q)?;
            if slice.windows > 0 {
                out.insert(version, slice.health());
            }
        }
        Ok(out)
    }
}
