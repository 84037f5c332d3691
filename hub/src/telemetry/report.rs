//! Fleet drift and health reports: merge the windows of a slice of the fleet, then compare
//! its profiles with a reference (the version's training data, or another slice). Pure: no
//! database, no HTTP; windows come in as decoded batches.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flotilla_api::telemetry::{FeatureDrift, FeatureKind, ModelThresholds, VersionHealth};
use flotilla_common::sketch::{
    DEVICE_K, DriftThresholds, NumericProfile, Profile, categorical_drift, numeric_drift, verdict,
};
use flotilla_common::telemetry::{NamedProfile, WindowBatch};
use serde::Serialize;

/// A slice's merged windows.
#[derive(Debug, Clone)]
pub struct SliceSummary {
    pub windows: u64,
    pub devices: BTreeSet<String>,
    pub requests: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency_ms: NumericProfile,
    pub features: Vec<NamedProfile>,
    pub predictions: Vec<NamedProfile>,
    /// Windows that could not be merged (a profile of another kind than the slice's).
    pub unmergeable: u64,
    /// Spool drops and losses: the largest cumulative count each device reported, summed.
    pub spool_dropped: u64,
    pub spool_lost: u64,
    spool_by_device: HashMap<String, (u64, u64)>,
    pub first_window_ms: Option<i64>,
    pub last_window_ms: Option<i64>,
}

impl Default for SliceSummary {
    fn default() -> Self {
        SliceSummary {
            windows: 0,
            devices: BTreeSet::new(),
            requests: 0,
            errors: BTreeMap::new(),
            latency_ms: NumericProfile::new(DEVICE_K),
            features: Vec::new(),
            predictions: Vec::new(),
            unmergeable: 0,
            spool_dropped: 0,
            spool_lost: 0,
            spool_by_device: HashMap::new(),
            first_window_ms: None,
            last_window_ms: None,
        }
    }
}

/// Whether `from` merges into `into`: same kinds by name, numeric sketches of one k.
fn numeric_merges(a: &NumericProfile, b: &NumericProfile) -> bool {
    a.k() == b.k() || a.valid() == 0 || b.valid() == 0
}

fn mergeable(into: &[NamedProfile], from: &[NamedProfile]) -> bool {
    from.iter()
        .all(|p| match into.iter().find(|q| q.name == p.name) {
            None => true,
            Some(q) => match (&q.profile, &p.profile) {
                (Profile::Numeric(a), Profile::Numeric(b)) => numeric_merges(a, b),
                (Profile::Categorical(_), Profile::Categorical(_)) => true,
                _ => false,
            },
        })
}

fn merge_named(into: &mut Vec<NamedProfile>, from: &[NamedProfile]) {
    for profile in from {
        match into.iter_mut().find(|p| p.name == profile.name) {
            Some(existing) => {
                // Checked by `mergeable` first.
                let _ = existing.profile.merge(&profile.profile);
            }
            None => into.push(profile.clone()),
        }
    }
}

impl SliceSummary {
    /// Adds one window; a window that does not merge with the slice (another kind or k) is
    /// left out whole and counted.
    pub fn add(&mut self, batch: &WindowBatch) {
        if !mergeable(&self.features, &batch.features)
            || !mergeable(&self.predictions, &batch.predictions)
            || !numeric_merges(&self.latency_ms, &batch.latency_ms)
        {
            self.unmergeable += 1;
            return;
        }
        merge_named(&mut self.features, &batch.features);
        merge_named(&mut self.predictions, &batch.predictions);
        let _ = self.latency_ms.merge(&batch.latency_ms);
        self.windows += 1;
        self.devices.insert(batch.device_id.clone());
        self.requests = self.requests.saturating_add(batch.requests);
        for (kind, n) in &batch.errors {
            let count = self.errors.entry(kind.clone()).or_insert(0);
            *count = count.saturating_add(*n);
        }
        let entry = self
            .spool_by_device
            .entry(batch.device_id.clone())
            .or_insert((0, 0));
        // Counters are cumulative per device: the slice total grows by how far this window
        // moved the device's largest value (kept up to date in O(1), not re-summed).
        let (dropped, lost) = (
            batch.spool_dropped_total.saturating_sub(entry.0),
            batch.spool_lost_total.saturating_sub(entry.1),
        );
        entry.0 += dropped;
        entry.1 += lost;
        self.spool_dropped += dropped;
        self.spool_lost += lost;
        self.first_window_ms = Some(
            self.first_window_ms
                .map_or(batch.window_start_ms, |t| t.min(batch.window_start_ms)),
        );
        self.last_window_ms = Some(
            self.last_window_ms
                .map_or(batch.window_end_ms, |t| t.max(batch.window_end_ms)),
        );
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn health(&self) -> VersionHealth {
        let q = |r: f64| self.latency_ms.quantile(r);
        VersionHealth {
            windows: self.windows,
            devices: self.devices.len() as u64,
            requests: self.requests,
            errors: self.error_count(),
            errors_by_kind: self.errors.clone(),
            error_rate: (self.requests > 0)
                .then(|| self.error_count() as f64 / self.requests as f64),
            latency_ms_p50: q(0.5),
            latency_ms_p90: q(0.9),
            latency_ms_p99: q(0.99),
            spool_dropped: self.spool_dropped,
            spool_lost: self.spool_lost,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub features: Vec<FeatureDrift>,
    pub drifted_features: Vec<String>,
    /// At least the dataset share of the features with a verdict drifted; `None` when no
    /// feature has a verdict.
    pub dataset_drift: Option<bool>,
}

fn missing(profile: &Profile) -> u64 {
    profile.count() - profile.valid()
}

fn compare_one(
    name: &str,
    reference: Option<&Profile>,
    current: &Profile,
    t: &DriftThresholds,
) -> FeatureDrift {
    let mut row = FeatureDrift {
        name: name.to_owned(),
        kind: match current {
            Profile::Numeric(_) => FeatureKind::Numeric,
            Profile::Categorical(_) => FeatureKind::Categorical,
        },
        reference_rows: reference.map_or(0, Profile::valid),
        current_rows: current.valid(),
        current_missing: missing(current),
        ks: None,
        wasserstein_sigma: None,
        psi: None,
        js: None,
        hellinger: None,
        linf: None,
        psi_level: None,
        drifted: None,
        note: None,
    };
    let enough = row.reference_rows >= t.min_rows && row.current_rows >= t.min_rows;
    match (reference, current) {
        (None, _) => row.note = Some("not in the reference".into()),
        (Some(Profile::Numeric(r)), Profile::Numeric(c)) => {
            if let Some(s) = numeric_drift(r, c) {
                let v = verdict(&s, r.valid(), c.valid(), t);
                row.ks = Some(s.ks);
                row.wasserstein_sigma = Some(s.wasserstein_sigma);
                row.psi = Some(s.psi);
                row.js = Some(s.js);
                row.hellinger = Some(s.hellinger);
                row.psi_level = v.psi_level;
                row.drifted = v.drifted;
            }
        }
        (Some(Profile::Categorical(r)), Profile::Categorical(c)) => {
            if let Some((js, linf)) = categorical_drift(r, c) {
                row.js = Some(js);
                row.linf = Some(linf);
                row.drifted = enough.then_some(js > t.js);
            }
        }
        (Some(r), c) => {
            row.note = Some(format!(
                "reference is {} but the devices send {}",
                r.kind().name(),
                c.kind().name()
            ));
        }
    }
    if row.drifted.is_none() && row.note.is_none() && !enough {
        row.note = Some(format!("fewer than {} rows on a side", t.min_rows));
    }
    row
}

/// Compares `current` with `reference`, feature by feature in `current`'s order.
pub fn compare(
    reference: &[NamedProfile],
    current: &[NamedProfile],
    thresholds: &ModelThresholds,
) -> Comparison {
    let features: Vec<FeatureDrift> = current
        .iter()
        .map(|c| {
            let r = reference
                .iter()
                .find(|r| r.name == c.name)
                .map(|r| &r.profile);
            compare_one(&c.name, r, &c.profile, &thresholds.for_feature(&c.name))
        })
        .collect();
    let judged: Vec<&FeatureDrift> = features.iter().filter(|f| f.drifted.is_some()).collect();
    let drifted_features: Vec<String> = judged
        .iter()
        .filter(|f| f.drifted == Some(true))
        .map(|f| f.name.clone())
        .collect();
    let dataset_drift = (!judged.is_empty()).then(|| {
        drifted_features.len() as f64 >= thresholds.dataset_share() * judged.len() as f64
            && !drifted_features.is_empty()
    });
    Comparison {
        features,
        drifted_features,
        dataset_drift,
    }
}

#[cfg(test)]
mod tests {
    use flotilla_common::sketch::{CategoricalProfile, REFERENCE_K};

    use super::*;

    fn numeric(name: &str, values: impl Iterator<Item = f32>, k: u16) -> NamedProfile {
        let mut p = NumericProfile::new(k);
        values.for_each(|v| p.update(Some(v)));
        NamedProfile {
            name: name.into(),
            profile: Profile::Numeric(p),
        }
    }

    #[test]
    fn only_the_shifted_feature_drifts_and_small_samples_get_no_verdict() {
        let reference = vec![
            numeric("a", (0..20_000).map(|i| (i % 1000) as f32), REFERENCE_K),
            numeric("b", (0..20_000).map(|i| (i % 500) as f32), REFERENCE_K),
        ];
        let current = vec![
            numeric("a", (0..5_000).map(|i| (i % 1000) as f32 + 250.0), DEVICE_K),
            numeric("b", (0..5_000).map(|i| (i % 500) as f32), DEVICE_K),
        ];
        let c = compare(&reference, &current, &ModelThresholds::default());
        assert_eq!(c.drifted_features, ["a"]);
        assert_eq!(c.dataset_drift, Some(true), "one of two features is half");
        let few = vec![numeric("a", (0..999).map(|i| i as f32 + 250.0), DEVICE_K)];
        let c = compare(&reference, &few, &ModelThresholds::default());
        assert_eq!((c.features[0].drifted, c.dataset_drift), (None, None));
        assert!(
            c.features[0]
                .note
                .as_deref()
                .unwrap()
                .contains("fewer than 1000")
        );
    }

    #[test]
    fn spool_losses_add_up_per_device_from_cumulative_counters() {
        let window = |device: &str, dropped: u64, lost: u64| WindowBatch {
            batch_id: [0; 16],
            device_id: device.into(),
            model: "m".into(),
            version: 1,
            window_start_ms: 0,
            window_end_ms: 1,
            requests: 1,
            errors: BTreeMap::new(),
            latency_ms: NumericProfile::new(DEVICE_K),
            features: vec![],
            predictions: vec![],
            spool_dropped_total: dropped,
            spool_lost_total: lost,
            captures: vec![],
        };
        let mut slice = SliceSummary::default();
        // Windows may arrive out of order: the largest cumulative value per device counts.
        for (device, dropped, lost) in [("a", 2, 0), ("a", 5, 1), ("a", 3, 1), ("b", 4, 0)] {
            slice.add(&window(device, dropped, lost));
        }
        assert_eq!((slice.spool_dropped, slice.spool_lost), (9, 1));
    }

    #[test]
    fn thresholds_per_feature_and_kind_mismatch() {
        let reference = vec![numeric(
            "a",
            (0..20_000).map(|i| (i % 1000) as f32),
            REFERENCE_K,
        )];
        let current = vec![numeric(
            "a",
            (0..5_000).map(|i| (i % 1000) as f32 + 250.0),
            DEVICE_K,
        )];
        let lenient: ModelThresholds =
            serde_json::from_str(r#"{"features": {"a": {"wasserstein_sigma": 5.0}}}"#).unwrap();
        assert_eq!(
            compare(&reference, &current, &lenient).features[0].drifted,
            Some(false)
        );
        let mut cat = CategoricalProfile::new();
        (0..5000).for_each(|_| cat.update(Some("x")));
        let c = compare(
            &reference,
            &[NamedProfile {
                name: "a".into(),
                profile: Profile::Categorical(cat),
            }],
            &ModelThresholds::default(),
        );
        assert_eq!(c.features[0].drifted, None);
        assert!(
            c.features[0]
                .note
                .as_deref()
                .unwrap()
                .contains("reference is numeric")
        );
    }
}
