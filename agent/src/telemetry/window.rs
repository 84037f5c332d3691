//! One model version's measurements over one window, before it is sealed into a batch:
//! feature and prediction profiles, requests, errors by kind, latency. Pure: tensors in,
//! profiles out. Accumulators merge (the recorder keeps one per shard).

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_common::sketch::{
    CategoricalProfile, DEVICE_K, NumericProfile, Profile, ProfileError, SCORE_K,
};
use flotilla_common::telemetry::{CaptureSample, NamedProfile, output_profile_names};
use flotilla_proto::inference::TensorData;
use flotilla_proto::telemetry::{FeatureMap, PredictionKind};

use flotilla_runtime::NamedTensor;

/// A request's feature values, copied out of its input before it runs: row-major `[rows,
/// features]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRows {
    /// Rows kept (every `stride`-th row of the request).
    pub rows: usize,
    pub values: Vec<f32>,
    /// 1 unless the request was larger than `MAX_SKETCHED_VALUES`.
    pub stride: usize,
}

/// Values sketched per request and tensor at most: a huge request is sampled (every n-th
/// row) so telemetry work per request stays bounded (about half a millisecond).
pub const MAX_SKETCHED_VALUES: usize = 16_384;

/// The row step that keeps `rows × width` under `MAX_SKETCHED_VALUES`.
fn stride_for(rows: usize, width: usize) -> usize {
    (rows * width.max(1)).div_ceil(MAX_SKETCHED_VALUES).max(1)
}

/// Values of a tensor as f32 (numbers only; BYTES gives `None`).
fn as_f32(data: &TensorData) -> Option<Vec<f32>> {
    Some(match data {
        TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f32).collect(),
        TensorData::Uint8(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::Uint16(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::Uint32(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::Uint64(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::Int8(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::Int16(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::Int32(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::Int64(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::Fp16(v) => v.iter().map(|x| x.to_f32()).collect(),
        TensorData::Fp32(v) => v.clone(),
        TensorData::Fp64(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
        TensorData::Bytes(_) => return None,
    })
}

/// Calls `each` with every value of a tensor as a label, formatting integers into one reused
/// buffer (no allocation per value on the inference path).
fn for_each_label(data: &TensorData, step: usize, mut each: impl FnMut(&str)) {
    use std::fmt::Write;
    let mut buffer = String::with_capacity(24);
    let mut number = |v: &dyn std::fmt::Display| {
        buffer.clear();
        let _ = write!(buffer, "{v}");
        each(&buffer);
    };
    match data {
        TensorData::Int64(v) => v.iter().step_by(step).for_each(|x| number(x)),
        TensorData::Int32(v) => v.iter().step_by(step).for_each(|x| number(x)),
        TensorData::Uint8(v) => v.iter().step_by(step).for_each(|x| number(x)),
        TensorData::Bool(v) => v.iter().step_by(step).for_each(|x| number(x)),
        TensorData::Bytes(v) => v
            .iter()
            .step_by(step)
            .for_each(|b| each(&String::from_utf8_lossy(b))),
        other => as_labels(other).iter().step_by(step).for_each(|l| each(l)),
    }
}

/// `[1.5,2,null]`: f32 values in their shortest form; NaN and infinities (not JSON) as null.
fn push_numbers(out: &mut String, values: &[f32]) {
    use std::fmt::Write;
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if v.is_finite() {
            let _ = write!(out, "{v}");
        } else {
            out.push_str("null");
        }
    }
    out.push(']');
}

/// Values of a tensor as labels (integers and text).
fn as_labels(data: &TensorData) -> Vec<String> {
    match data {
        TensorData::Bytes(v) => v
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect(),
        other => as_f32(other)
            .unwrap_or_default()
            .into_iter()
            .map(|x| {
                if x.fract() == 0.0 {
                    (x as i64).to_string()
                } else {
                    x.to_string()
                }
            })
            .collect(),
    }
}

/// The feature rows of a request, when its mapped input is there with the mapped width.
pub fn extract_features(map: &FeatureMap, inputs: &[NamedTensor]) -> Option<FeatureRows> {
    let input = inputs.iter().find(|t| t.name == map.input)?;
    let width = map.features.len();
    if input.shape.len() != 2 || input.shape[1] as usize != width || width == 0 {
        return None;
    }
    let all = as_f32(&input.data)?;
    let rows = all.len() / width;
    let stride = stride_for(rows, width);
    let values: Vec<f32> = if stride == 1 {
        all
    } else {
        all.chunks_exact(width)
            .step_by(stride)
            .flatten()
            .copied()
            .collect()
    };
    Some(FeatureRows {
        rows: values.len() / width,
        values,
        stride,
    })
}

/// Data capture limits for one model (off unless configured).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptureLimits {
    /// Samples kept per window at most.
    pub per_window: usize,
    /// A sample larger than this (JSON bytes) is skipped.
    pub max_sample_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct WindowAccumulator {
    pub map: Option<Arc<FeatureMap>>,
    pub requests: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub latency_ms: NumericProfile,
    features: Vec<Profile>,
    /// One slot per prediction output of the map, filled when the output is first seen (its
    /// column count decides the profiles), so later requests only index.
    predictions: Vec<Option<Vec<NamedProfile>>>,
    pub captures: Vec<CaptureSample>,
    /// Requests whose features could not be read with the map (wrong input or width).
    pub unmapped: u64,
}

impl WindowAccumulator {
    pub fn new(map: Option<Arc<FeatureMap>>) -> WindowAccumulator {
        let map_predictions = map.as_ref().map_or(0, |m| m.predictions.len());
        let features = map
            .as_ref()
            .map(|m| {
                m.features
                    .iter()
                    .map(|name| {
                        if m.categorical.contains(name) {
                            Profile::Categorical(CategoricalProfile::new())
                        } else {
                            Profile::Numeric(NumericProfile::new(DEVICE_K))
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        WindowAccumulator {
            map,
            requests: 0,
            errors: BTreeMap::new(),
            latency_ms: NumericProfile::new(DEVICE_K),
            features,
            predictions: vec![None; map_predictions],
            captures: Vec::new(),
            unmapped: 0,
        }
    }

    pub fn record_error(&mut self, kind: &'static str, latency_ms: f32) {
        self.requests += 1;
        *self.errors.entry(kind).or_insert(0) += 1;
        self.latency_ms.update(Some(latency_ms));
    }

    /// A request that succeeded: its features (when mapped) and its outputs.
    pub fn record_success(
        &mut self,
        features: Option<&FeatureRows>,
        outputs: &[NamedTensor],
        latency_ms: f32,
        capture: Option<CaptureLimits>,
        now_ms: i64,
    ) {
        self.requests += 1;
        self.latency_ms.update(Some(latency_ms));
        let Some(map) = self.map.clone() else {
            return;
        };
        match features {
            Some(rows) => {
                let width = self.features.len();
                for row in rows.values.chunks_exact(width) {
                    for (profile, &value) in self.features.iter_mut().zip(row) {
                        match profile {
                            Profile::Numeric(p) => p.update(Some(value)),
                            Profile::Categorical(p) => p.update(Some(&value.to_string())),
                        }
                    }
                }
            }
            None => self.unmapped += 1,
        }
        for (slot, prediction) in map.predictions.iter().enumerate() {
            let Some(tensor) = outputs.iter().find(|t| t.name == prediction.output) else {
                continue;
            };
            let stride = features.map_or(1, |f| f.stride);
            self.record_prediction(slot, prediction.kind, tensor, stride);
        }
        if let (Some(limits), Some(rows)) = (capture, features)
            && self.captures.len() < limits.per_window
        {
            self.capture(&map, rows, outputs, limits, now_ms);
        }
    }

    /// `stride`: the feature rows' sampling step, so outputs are sampled on the same rows
    /// (and never more than `MAX_SKETCHED_VALUES` values either way).
    fn record_prediction(
        &mut self,
        slot: usize,
        kind: PredictionKind,
        tensor: &NamedTensor,
        stride: usize,
    ) {
        let rows = tensor.shape.first().copied().unwrap_or(1).max(1) as usize;
        let columns = tensor.data.len() / rows;
        let stride = stride.max(stride_for(rows, columns));
        let profiles = self.predictions[slot].get_or_insert_with(|| match kind {
            PredictionKind::Class => vec![NamedProfile {
                name: tensor.name.clone(),
                profile: Profile::Categorical(CategoricalProfile::new()),
            }],
            PredictionKind::Score => output_profile_names(&tensor.name, columns)
                .into_iter()
                .map(|name| NamedProfile {
                    name,
                    profile: Profile::Numeric(NumericProfile::new(SCORE_K)),
                })
                .collect(),
        });
        match (kind, profiles.as_mut_slice()) {
            (
                PredictionKind::Class,
                [
                    NamedProfile {
                        profile: Profile::Categorical(p),
                        ..
                    },
                ],
            ) => {
                for_each_label(&tensor.data, stride * columns.max(1), |label| {
                    p.update(Some(label))
                });
            }
            (PredictionKind::Score, slots) => {
                let Some(values) = as_f32(&tensor.data) else {
                    return;
                };
                let max_only = slots.len() == 1 && columns > 1;
                if !max_only && slots.len() != columns.max(1) {
                    return; // another width than the first request had: not comparable
                }
                for chunk in values.chunks_exact(columns.max(1)).step_by(stride) {
                    if max_only {
                        let max = chunk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        if let Profile::Numeric(p) = &mut slots[0].profile {
                            p.update(Some(max));
                        }
                    } else {
                        for (slot, &value) in slots.iter_mut().zip(chunk) {
                            if let Profile::Numeric(p) = &mut slot.profile {
                                p.update(Some(value));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn capture(
        &mut self,
        map: &FeatureMap,
        rows: &FeatureRows,
        outputs: &[NamedTensor],
        limits: CaptureLimits,
        now_ms: i64,
    ) {
        // Inputs keep the feature order: {"features": [names], "rows": [[values], ...]}.
        let width = map.features.len();
        let mut inputs = String::with_capacity(rows.values.len() * 8 + 64);
        inputs.push_str("{\"features\":");
        inputs.push_str(&serde_json::to_string(&map.features).expect("names serialize"));
        inputs.push_str(",\"rows\":[");
        for (i, row) in rows.values.chunks_exact(width).enumerate() {
            if i > 0 {
                inputs.push(',');
            }
            push_numbers(&mut inputs, row);
        }
        inputs.push_str("]}");
        let mut text = String::from("{");
        for (i, t) in outputs.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&serde_json::to_string(&t.name).expect("names serialize"));
            text.push(':');
            match as_f32(&t.data) {
                Some(values) => push_numbers(&mut text, &values),
                None => text.push_str(
                    &serde_json::to_string(&as_labels(&t.data)).expect("labels serialize"),
                ),
            }
        }
        text.push('}');
        let outputs = text;
        if inputs.len() + outputs.len() <= limits.max_sample_bytes {
            self.captures.push(CaptureSample {
                at_ms: now_ms,
                inputs,
                outputs,
            });
        }
    }

    pub fn merge(&mut self, other: WindowAccumulator) -> Result<(), ProfileError> {
        self.requests += other.requests;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_insert(0) += n;
        }
        self.latency_ms.merge(&other.latency_ms)?;
        if self.features.len() == other.features.len() {
            for (a, b) in self.features.iter_mut().zip(&other.features) {
                a.merge(b)?;
            }
        }
        for (mine, theirs) in self.predictions.iter_mut().zip(other.predictions) {
            match (mine.as_mut(), theirs) {
                (Some(mine), Some(theirs)) => {
                    for profile in theirs {
                        match mine.iter_mut().find(|p| p.name == profile.name) {
                            Some(existing) => existing.profile.merge(&profile.profile)?,
                            None => mine.push(profile),
                        }
                    }
                }
                (None, Some(theirs)) => *mine = Some(theirs),
                (_, None) => {}
            }
        }
        self.captures.extend(other.captures);
        self.unmapped += other.unmapped;
        Ok(())
    }

    /// The named profiles for a batch.
    pub fn into_profiles(self) -> (Vec<NamedProfile>, Vec<NamedProfile>) {
        let names = self
            .map
            .as_ref()
            .map(|m| m.features.clone())
            .unwrap_or_default();
        let features = names
            .into_iter()
            .zip(self.features)
            .map(|(name, profile)| NamedProfile { name, profile })
            .collect();
        let predictions = self.predictions.into_iter().flatten().flatten().collect();
        (features, predictions)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::telemetry::PredictionOutput;

    use super::*;

    fn iris_map() -> Arc<FeatureMap> {
        Arc::new(FeatureMap {
            input: "float_input".into(),
            features: vec!["a".into(), "b".into()],
            categorical: vec![],
            predictions: vec![
                PredictionOutput {
                    output: "label".into(),
                    kind: PredictionKind::Class,
                },
                PredictionOutput {
                    output: "probabilities".into(),
                    kind: PredictionKind::Score,
                },
            ],
        })
    }

    fn tensor(name: &str, shape: &[i64], data: TensorData) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            shape: shape.to_vec(),
            data,
        }
    }

    #[test]
    fn features_labels_and_scores_are_profiled() {
        let map = iris_map();
        let mut window = WindowAccumulator::new(Some(map.clone()));
        let inputs = [tensor(
            "float_input",
            &[2, 2],
            TensorData::Fp32(vec![1.0, 10.0, f32::NAN, 20.0]),
        )];
        let rows = extract_features(&map, &inputs).unwrap();
        assert_eq!(rows.rows, 2);
        let outputs = [
            tensor("label", &[2], TensorData::Int64(vec![0, 2])),
            tensor(
                "probabilities",
                &[2, 2],
                TensorData::Fp32(vec![0.9, 0.1, 0.2, 0.8]),
            ),
        ];
        let limits = CaptureLimits {
            per_window: 1,
            max_sample_bytes: 10_000,
        };
        window.record_success(Some(&rows), &outputs, 0.5, Some(limits), 7);
        window.record_success(Some(&rows), &outputs, 0.5, Some(limits), 8);
        window.record_error("bad_request", 0.1);
        assert_eq!((window.requests, window.errors["bad_request"]), (3, 1));
        assert_eq!(
            window.captures.len(),
            1,
            "capture stops at the per-window limit"
        );
        assert_eq!(
            window.captures[0].inputs,
            r#"{"features":["a","b"],"rows":[[1,10],[null,20]]}"#
        );
        assert_eq!(
            window.captures[0].outputs,
            r#"{"label":[0,2],"probabilities":[0.9,0.1,0.2,0.8]}"#
        );
        let (features, predictions) = window.into_profiles();
        let Profile::Numeric(a) = &features[0].profile else {
            panic!()
        };
        assert_eq!((a.count, a.non_finite, a.valid()), (4, 2, 2));
        let names: Vec<&str> = predictions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["label", "probabilities[0]", "probabilities[1]"]);
        let Profile::Categorical(label) = &predictions[0].profile else {
            panic!()
        };
        assert_eq!(label.frequencies(), vec![("0".into(), 2), ("2".into(), 2)]);
    }

    #[test]
    fn huge_requests_are_sampled_so_the_work_stays_bounded() {
        let map = iris_map();
        let rows = 100_000;
        let inputs = [tensor(
            "float_input",
            &[rows, 2],
            TensorData::Fp32((0..rows * 2).map(|i| i as f32).collect()),
        )];
        let features = extract_features(&map, &inputs).unwrap();
        assert_eq!((features.stride, features.rows), (13, 7693));
        assert!(features.values.len() <= MAX_SKETCHED_VALUES);
        assert_eq!(&features.values[..4], &[0.0, 1.0, 26.0, 27.0]);
        let outputs = [tensor(
            "label",
            &[rows],
            TensorData::Int64(vec![1; rows as usize]),
        )];
        let mut window = WindowAccumulator::new(Some(map));
        window.record_success(Some(&features), &outputs, 1.0, None, 0);
        let (_, predictions) = window.into_profiles();
        assert_eq!(
            predictions[0].profile.count(),
            7693,
            "labels sampled on the same rows"
        );
    }

    #[test]
    fn a_request_of_another_width_is_counted_not_profiled() {
        let map = iris_map();
        let inputs = [tensor(
            "float_input",
            &[1, 3],
            TensorData::Fp32(vec![1.0, 2.0, 3.0]),
        )];
        assert_eq!(extract_features(&map, &inputs), None);
        let mut window = WindowAccumulator::new(Some(map));
        window.record_success(None, &[], 0.2, None, 0);
        assert_eq!((window.requests, window.unmapped), (1, 1));
    }
}
