//! What answers a loaded model's requests. A device runs its own ONNX Runtime sessions; a
//! process that simulates thousands of devices (fleet-sim) shares sessions between the
//! devices that load the same file, or declares a cost model instead of running anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use flotilla_proto::inference::{Datatype, TensorData};

use super::session_pool::{InferError, NamedTensor, SessionPool};
use super::signature::{ModelSignature, TensorSpec};

/// How a loaded model answers requests.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Engine {
    /// Its own ONNX Runtime sessions: what a device does.
    #[default]
    Onnx,
    /// ONNX Runtime sessions shared by every load of the same bytes (same model, version and
    /// session settings) in this process: thousands of simulated devices, one set of sessions.
    SharedOnnx,
    /// No inference: answers after a declared latency with synthetic outputs of the model's
    /// signature. The file is still loaded once per process (shared) to learn the signature.
    Cost(CostModel),
}

/// A declared inference cost: each request takes a latency drawn uniformly from
/// `[min, max]` (fixed when equal).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    pub min_latency: Duration,
    pub max_latency: Duration,
}

/// Sessions shared between loads, by content and settings. Weak: sessions are freed when the
/// last device unloads them.
type SharedKey = (String, u64, [u8; 32], usize, usize);
type SharedPools = Mutex<HashMap<SharedKey, Weak<(SessionPool, ModelSignature)>>>;

fn shared_pools() -> &'static SharedPools {
    static POOLS: std::sync::OnceLock<SharedPools> = std::sync::OnceLock::new();
    POOLS.get_or_init(Default::default)
}

/// The shared pool for this key, or a new one made by `make` (under the lock, so concurrent
/// loads of one file make it once).
pub(crate) fn shared_pool<E>(
    key: SharedKey,
    make: impl FnOnce() -> Result<(SessionPool, ModelSignature), E>,
) -> Result<Arc<(SessionPool, ModelSignature)>, E> {
    let mut pools = shared_pools().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = pools.get(&key).and_then(Weak::upgrade) {
        return Ok(existing);
    }
    pools.retain(|_, weak| weak.strong_count() > 0);
    let made = Arc::new(make()?);
    pools.insert(key, Arc::downgrade(&made));
    Ok(made)
}

pub(crate) fn shared_key(
    name: &str,
    version: u64,
    bytes: &[u8],
    sessions: usize,
    intra_op_threads: usize,
) -> SharedKey {
    use sha2::Digest;
    (
        name.to_owned(),
        version,
        sha2::Sha256::digest(bytes).into(),
        sessions,
        intra_op_threads,
    )
}

impl CostModel {
    /// Answers like the model would, after the declared latency: checks the inputs against
    /// the signature, then makes outputs of the signature's types and shapes (dynamic
    /// dimensions take the batch size). Values are derived from the inputs' bits, so the
    /// same input gives the same output, and classes spread over `0..k` where `k` is the
    /// width of the model's score output (2 without one).
    pub async fn infer(
        &self,
        model: &str,
        version: u64,
        signature: &ModelSignature,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<Vec<NamedTensor>, InferError> {
        let failed = |message: String| InferError::Run {
            model: model.to_owned(),
            version,
            message,
        };
        let mut batch = 1;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for spec in &signature.inputs {
            let tensor = inputs
                .iter()
                .find(|t| t.name == spec.name)
                .ok_or_else(|| failed(format!("missing input {:?}", spec.name)))?;
            if !spec.accepts_shape(&tensor.shape) || tensor.data.datatype() != spec.datatype {
                return Err(failed(format!(
                    "input {:?} is {} {:?}; the model takes {} {:?}",
                    spec.name,
                    tensor.data.datatype(),
                    tensor.shape,
                    spec.datatype,
                    spec.shape
                )));
            }
            batch = tensor.shape.first().copied().unwrap_or(1).max(0);
            seed ^= fingerprint(&tensor.data);
        }
        let span = self.max_latency.saturating_sub(self.min_latency);
        let latency = self.min_latency + span.mul_f64(unit(&mut seed));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let classes = signature
            .outputs
            .iter()
            .find(|s| s.shape.len() == 2 && s.shape[1] > 1 && is_float(s.datatype))
            .map_or(2, |s| s.shape[1] as usize);
        outputs
            .iter()
            .map(|name| {
                let spec = signature
                    .outputs
                    .iter()
                    .find(|s| &s.name == name)
                    .ok_or_else(|| failed(format!("the model has no output {name:?}")))?;
                Ok(synthetic(spec, batch, classes, &mut seed))
            })
            .collect()
    }
}

fn is_float(datatype: Datatype) -> bool {
    matches!(datatype, Datatype::Fp32 | Datatype::Fp64)
}

/// A cheap digest of a tensor's values (FNV-1a over the first 64 bytes' worth).
fn fingerprint(data: &TensorData) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut mix = |bits: u64| {
        hash ^= bits;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    match data {
        TensorData::Fp32(v) => v.iter().take(16).for_each(|x| mix(x.to_bits() as u64)),
        TensorData::Fp64(v) => v.iter().take(8).for_each(|x| mix(x.to_bits())),
        TensorData::Int64(v) => v.iter().take(8).for_each(|x| mix(*x as u64)),
        TensorData::Int32(v) => v.iter().take(16).for_each(|x| mix(*x as u64)),
        other => mix(other.len() as u64),
    }
    hash
}

/// splitmix64 step, as a number in [0, 1).
fn unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

fn synthetic(spec: &TensorSpec, batch: i64, classes: usize, seed: &mut u64) -> NamedTensor {
    let shape: Vec<i64> = spec
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| match (i, d) {
            (0, d) if d < 0 => batch,
            (_, d) if d < 0 => 1,
            (_, d) => d,
        })
        .collect();
    let count = shape.iter().product::<i64>().max(0) as usize;
    let row = shape.get(1).copied().unwrap_or(1).max(1) as usize;
    let mut scores = || {
        // Rows sum to one, like class probabilities.
        let mut values: Vec<f64> = (0..count).map(|_| unit(seed) + 1e-3).collect();
        for chunk in values.chunks_mut(row) {
            let total: f64 = chunk.iter().sum();
            chunk.iter_mut().for_each(|v| *v /= total);
        }
        values
    };
    let data = match spec.datatype {
        Datatype::Fp32 => TensorData::Fp32(scores().into_iter().map(|v| v as f32).collect()),
        Datatype::Fp64 => TensorData::Fp64(scores()),
        Datatype::Int64 => TensorData::Int64(
            (0..count)
                .map(|_| (unit(seed) * classes as f64) as i64)
                .collect(),
        ),
        Datatype::Int32 => TensorData::Int32(
            (0..count)
                .map(|_| (unit(seed) * classes as f64) as i32)
                .collect(),
        ),
        Datatype::Bytes => TensorData::Bytes(
            (0..count)
                .map(|_| format!("class_{}", (unit(seed) * classes as f64) as usize).into_bytes())
                .collect(),
        ),
        Datatype::Bool => TensorData::Bool((0..count).map(|_| unit(seed) < 0.5).collect()),
        _ => TensorData::Fp32(vec![0.0; count]),
    };
    NamedTensor {
        name: spec.name.clone(),
        shape,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iris_signature() -> ModelSignature {
        let spec = |name: &str, datatype, shape: Vec<i64>| TensorSpec {
            name: name.into(),
            datatype,
            shape,
        };
        ModelSignature {
            inputs: vec![spec("input", Datatype::Fp32, vec![-1, 4])],
            outputs: vec![
                spec("label", Datatype::Int64, vec![-1]),
                spec("probabilities", Datatype::Fp32, vec![-1, 3]),
            ],
            skipped_outputs: vec![],
        }
    }

    fn cost(ms: u64) -> CostModel {
        CostModel {
            min_latency: Duration::from_millis(ms),
            max_latency: Duration::from_millis(ms),
        }
    }

    #[tokio::test]
    async fn cost_model_answers_in_the_signatures_shapes_deterministically() {
        let input = NamedTensor {
            name: "input".into(),
            shape: vec![5, 4],
            data: TensorData::Fp32((0..20).map(|i| i as f32).collect()),
        };
        let outputs = ["label".to_owned(), "probabilities".to_owned()];
        let answer = cost(0)
            .infer(
                "iris",
                1,
                &iris_signature(),
                std::slice::from_ref(&input),
                &outputs,
            )
            .await
            .unwrap();
        assert_eq!(answer[0].shape, vec![5]);
        assert_eq!(answer[1].shape, vec![5, 3]);
        let TensorData::Int64(labels) = &answer[0].data else {
            panic!("labels are int64")
        };
        assert!(labels.iter().all(|l| (0..3).contains(l)));
        let TensorData::Fp32(p) = &answer[1].data else {
            panic!("scores are fp32")
        };
        for row in p.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        }
        let again = cost(0)
            .infer("iris", 1, &iris_signature(), &[input], &outputs)
            .await
            .unwrap();
        assert_eq!(answer, again);
    }

    #[tokio::test]
    async fn cost_model_refuses_what_the_model_would() {
        let wrong = NamedTensor {
            name: "input".into(),
            shape: vec![1, 3],
            data: TensorData::Fp32(vec![0.0; 3]),
        };
        let error = cost(0)
            .infer("iris", 1, &iris_signature(), &[wrong], &["label".into()])
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("the model takes FP32 [-1, 4]"),
            "{error}"
        );
        let error = cost(0)
            .infer("iris", 1, &iris_signature(), &[], &["label".into()])
            .await
            .unwrap_err();
        assert!(error.to_string().contains("missing input"), "{error}");
    }

    #[tokio::test]
    async fn cost_model_takes_its_declared_latency() {
        let input = NamedTensor {
            name: "input".into(),
            shape: vec![1, 4],
            data: TensorData::Fp32(vec![1.0; 4]),
        };
        let started = tokio::time::Instant::now();
        cost(25)
            .infer("iris", 1, &iris_signature(), &[input], &["label".into()])
            .await
            .unwrap();
        // A lower bound only: the answer waits at least the declared latency.
        assert!(started.elapsed() >= Duration::from_millis(25));
    }
}
