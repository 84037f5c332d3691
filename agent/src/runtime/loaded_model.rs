//! One version of one model, loaded and ready: its signature and its session pool.

use std::path::{Path, PathBuf};

use ort::session::Session;

use super::environment::{RuntimeInitError, init_onnx_runtime};
use super::session_pool::{InferError, NamedTensor, SessionPool};
use super::signature::ModelSignature;

/// How many sessions and threads serve one model version.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSettings {
    /// Sessions, each on its own worker thread: requests to this model run this many at a time.
    pub sessions: usize,
    /// ONNX Runtime intra-op threads per session (parallelism inside one request).
    pub intra_op_threads: usize,
    /// Requests that may wait for a session before new ones are refused as busy.
    pub queue_depth: usize,
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
    pool: SessionPool,
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
        let mut sessions = Vec::with_capacity(settings.sessions.max(1));
        for _ in 0..settings.sessions.max(1) {
            let session = new_session(environment, &bytes, settings.intra_op_threads)
                .map_err(|e| invalid(e.to_string()))?;
            sessions.push(session);
        }
        let signature = ModelSignature::from_session(&sessions[0]).map_err(invalid)?;
        if !signature.skipped_outputs.is_empty() {
            tracing::warn!(model = name, version, skipped = ?signature.skipped_outputs, "outputs that are not tensors are not served");
        }
        let pool = SessionPool::new(name, version, sessions, settings.queue_depth);
        Ok(LoadedModel {
            name: name.to_owned(),
            version,
            path: path.to_owned(),
            signature,
            pool,
        })
    }

    /// Runs the model; `outputs` names the outputs to return, in order.
    pub async fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        outputs: Vec<String>,
    ) -> Result<Vec<NamedTensor>, InferError> {
        self.pool.infer(inputs, outputs).await
    }
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
