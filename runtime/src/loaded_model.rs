//! One version of one model, loaded and ready: its signature and its session pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_common::telemetry::default_feature_map;
use flotilla_proto::telemetry::FeatureMap;
use ort::session::Session;

use super::engine::{CostModel, Engine, shared_key, shared_pool};
use super::environment::{RuntimeInitError, init_onnx_runtime};
use super::session_pool::{InferError, NamedTensor, SessionPool};
use super::signature::ModelSignature;

/// How many sessions and threads serve one model version.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSettings {
    /// Sessions: how many requests to this model run at a time.
    pub sessions: usize,
    /// ONNX Runtime intra-op threads per session (parallelism inside one request).
    pub intra_op_threads: usize,
    /// Requests that may wait for a session before new ones are refused as busy.
    pub queue_depth: usize,
    /// Own sessions, sessions shared in this process, or a declared cost model.
    pub engine: Engine,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Runtime(#[from] RuntimeInitError),
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path} is not a model ONNX Runtime can load: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug)]
pub struct LoadedModel {
    pub name: String,
    pub version: u64,
    pub path: PathBuf,
    pub signature: ModelSignature,
    /// How requests map to named features for telemetry: `model.features.json` beside the
    /// model file (`.onnx` replaced by `.features.json`; the hub's manifest writes it), else
    /// the default from the signature, else none.
    pub feature_map: Option<Arc<FeatureMap>>,
    runner: Runner,
}

/// What runs this version's requests.
#[derive(Debug)]
enum Runner {
    Own(SessionPool),
    Shared(Arc<(SessionPool, ModelSignature)>),
    /// Keeps the one shared session alive, so reloads do not load the file again.
    Cost(
        CostModel,
        #[allow(dead_code)] Arc<(SessionPool, ModelSignature)>,
    ),
}

/// The sidecar file that holds a model file's feature map.
pub fn feature_map_path(model_path: &Path) -> PathBuf {
    model_path.with_extension("features.json")
}

fn load_feature_map(model_path: &Path, signature: &ModelSignature) -> Option<Arc<FeatureMap>> {
    let sidecar = feature_map_path(model_path);
    if let Ok(text) = std::fs::read_to_string(&sidecar) {
        match serde_json::from_str::<FeatureMap>(&text) {
            Ok(map) => return Some(Arc::new(map)),
            Err(error) => {
                tracing::warn!(path = %sidecar.display(), %error, "feature map file is not valid; using the default")
            }
        }
    }
    let inputs: Vec<_> = signature.inputs.iter().map(|s| s.metadata()).collect();
    let outputs: Vec<_> = signature.outputs.iter().map(|s| s.metadata()).collect();
    default_feature_map(&inputs, &outputs).map(Arc::new)
}

impl LoadedModel {
    /// Reads and loads the model; blocking (call it from `spawn_blocking` in async code).
    pub fn load(
        name: &str,
        version: u64,
        path: &Path,
        settings: &SessionSettings,
    ) -> Result<LoadedModel, LoadError> {
        let environment = init_onnx_runtime(None)?;
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| LoadError::Invalid {
            path: path.to_owned(),
            message,
        };
        let sessions = settings.sessions.max(1);
        let make_pool = |sessions: usize,
                         queue_depth: usize|
         -> Result<(SessionPool, ModelSignature), LoadError> {
            let mut made = Vec::with_capacity(sessions);
            for _ in 0..sessions {
                let session = new_session(environment, &bytes, settings.intra_op_threads)
                    .map_err(|e| invalid(e.to_string()))?;
                made.push(session);
            }
            let signature = ModelSignature::from_session(&made[0]).map_err(invalid)?;
            if !signature.skipped_outputs.is_empty() {
                tracing::warn!(model = name, version, skipped = ?signature.skipped_outputs, "outputs that are not tensors are not served");
            }
            Ok((
                SessionPool::new(name, version, made, queue_depth),
                signature,
            ))
        };
        let (runner, signature) = match &settings.engine {
            Engine::Onnx => {
                let (pool, signature) = make_pool(sessions, settings.queue_depth)?;
                (Runner::Own(pool), signature)
            }
            Engine::SharedOnnx | Engine::Cost(_) => {
                let key = shared_key(name, version, &bytes, sessions, settings.intra_op_threads);
                // A shared pool stands in for every device's own sessions: one device's
                // request (or install smoke test) must not be refused because a thousand
                // others queued, so it has no waiting limit.
                let shared = shared_pool(key, || make_pool(sessions, usize::MAX))?;
                let signature = shared.1.clone();
                match &settings.engine {
                    Engine::Cost(cost) => (Runner::Cost(*cost, shared), signature),
                    _ => (Runner::Shared(shared), signature),
                }
            }
        };
        let feature_map = load_feature_map(path, &signature);
        Ok(LoadedModel {
            name: name.to_owned(),
            version,
            path: path.to_owned(),
            feature_map,
            signature,
            runner,
        })
    }

    /// Requests waiting for a free session of this version now.
    pub fn waiting(&self) -> usize {
        match &self.runner {
            Runner::Own(pool) => pool.waiting(),
            Runner::Shared(shared) => shared.0.waiting(),
            Runner::Cost(..) => 0,
        }
    }

    /// Runs the model once on an input derived from its schema (zeros, empty strings, dynamic
    /// dimensions as 1): proof that it really runs before it is switched on.
    pub async fn smoke_test(&self) -> Result<(), InferError> {
        use flotilla_proto::inference::{Datatype, TensorData};
        let inputs = self
            .signature
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<i64> = spec
                    .shape
                    .iter()
                    .map(|&d| if d < 0 { 1 } else { d })
                    .collect();
                let count = shape.iter().product::<i64>().max(0) as usize;
                let data = match spec.datatype {
                    Datatype::Bool => TensorData::Bool(vec![false; count]),
                    Datatype::Uint8 => TensorData::Uint8(vec![0; count]),
                    Datatype::Uint16 => TensorData::Uint16(vec![0; count]),
                    Datatype::Uint32 => TensorData::Uint32(vec![0; count]),
                    Datatype::Uint64 => TensorData::Uint64(vec![0; count]),
                    Datatype::Int8 => TensorData::Int8(vec![0; count]),
                    Datatype::Int16 => TensorData::Int16(vec![0; count]),
                    Datatype::Int32 => TensorData::Int32(vec![0; count]),
                    Datatype::Int64 => TensorData::Int64(vec![0; count]),
                    Datatype::Fp16 => TensorData::Fp16(vec![half::f16::ZERO; count]),
                    Datatype::Fp32 => TensorData::Fp32(vec![0.0; count]),
                    Datatype::Fp64 => TensorData::Fp64(vec![0.0; count]),
                    Datatype::Bf16 => TensorData::Bf16(vec![half::bf16::ZERO; count]),
                    Datatype::Bytes => TensorData::Bytes(vec![Vec::new(); count]),
                };
                NamedTensor {
                    name: spec.name.clone(),
                    shape,
                    data,
                }
            })
            .collect();
        let outputs = self
            .signature
            .outputs
            .iter()
            .map(|s| s.name.clone())
            .collect();
        self.infer(inputs, outputs).await.map(|_| ())
    }

    /// Runs the model; `outputs` names the outputs to return, in order.
    pub async fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: Vec<String>,
    ) -> Result<Vec<NamedTensor>, InferError> {
        match &self.runner {
            Runner::Own(pool) => pool.infer(inputs, outputs).await,
            Runner::Shared(shared) => shared.0.infer(inputs, outputs).await,
            Runner::Cost(cost, _) => {
                cost.infer(&self.name, self.version, &self.signature, &inputs, &outputs)
                    .await
            }
        }
    }
}

/// Reads a model file's signature through one ONNX Runtime session, without a serving
/// pool: what a registry needs to check that an upload loads and to learn its schema.
/// Blocking.
pub fn inspect_model(path: &Path) -> Result<ModelSignature, LoadError> {
    let environment = init_onnx_runtime(None)?;
    // Readable at all? (ONNX Runtime's own message for a missing file is less clear.) The
    // file itself is read by ONNX Runtime, never held whole here: pushes go up to 2 GiB.
    std::fs::File::open(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |message: String| LoadError::Invalid {
        path: path.to_owned(),
        message,
    };
    let session = session_from_file(environment, path).map_err(|e| invalid(e.to_string()))?;
    ModelSignature::from_session(&session).map_err(invalid)
}

fn session_from_file(
    environment: &ort::environment::Environment,
    path: &Path,
) -> ort::Result<Session> {
    let mut builder = Session::builder(environment)?
        .with_intra_threads(1)?
        .with_inter_threads(1)?;
    builder.commit_from_file(path)
}

fn new_session(
    environment: &ort::environment::Environment,
    bytes: &[u8],
    intra_op_threads: usize,
) -> ort::Result<Session> {
    let mut builder = Session::builder(environment)?
        .with_intra_threads(intra_op_threads.max(1))?
        .with_inter_threads(1)?;
    builder.commit_from_memory(bytes)
}
