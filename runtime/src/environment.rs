//! The one ONNX Runtime environment a process may have, loaded from a shared library found by
//! `flotilla_common::onnx_runtime_library`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flotilla_common::onnx_runtime_library::{LocateError, SearchContext, locate};
use ort::environment::Environment;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeInitError {
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error(
        "cannot load ONNX Runtime from {path}: {message}; the agent needs ONNX Runtime 1.31 (deploy/fetch-onnxruntime.sh fetches it)"
    )]
    Load { path: PathBuf, message: String },
}

static ENVIRONMENT: OnceLock<Result<(PathBuf, Environment), RuntimeInitError>> = OnceLock::new();

/// Loads ONNX Runtime once per process and returns its environment. Later calls return the
/// first result whatever path they pass: ONNX Runtime cannot be loaded twice.
pub fn init_onnx_runtime(
    explicit_library: Option<&Path>,
) -> Result<&'static Environment, RuntimeInitError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let context = SearchContext::from_process(explicit_library.map(Path::to_path_buf));
        let path = locate(&context, Path::is_file)?;
        let load_error = |message: String| RuntimeInitError::Load {
            path: path.clone(),
            message,
        };
        let builder = ort::init_from(&path).map_err(|e| load_error(e.to_string()))?;
        let environment = builder
            .with_name("flotilla-agent")
            .with_logger(std::sync::Arc::new(onnx_runtime_log))
            .build()
            .map_err(|e| load_error(e.to_string()))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok((path, environment))
    });
    match result {
        Ok((_, environment)) => Ok(environment),
        Err(error) => Err(error.clone()),
    }
}

/// ONNX Runtime's own log lines, through `tracing` (target `onnxruntime`) instead of its
/// default of stderr. A failing inference is logged there at error level on every request,
/// while the caller already gets the error in its answer, so that level goes to debug: a bad
/// input stream must not flood the device's log.
fn onnx_runtime_log(
    level: ort::logging::LogLevel,
    category: &str,
    _id: &str,
    location: &str,
    message: &str,
) {
    use ort::logging::LogLevel;
    match level {
        LogLevel::Fatal => {
            tracing::error!(target: "onnxruntime", category, location, "{message}")
        }
        LogLevel::Error | LogLevel::Warning => {
            tracing::debug!(target: "onnxruntime", category, location, "{message}")
        }
        LogLevel::Info | LogLevel::Verbose => {
            tracing::trace!(target: "onnxruntime", category, location, "{message}")
        }
    }
}
