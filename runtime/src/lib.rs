//! Running ONNX models with ONNX Runtime: the process-wide environment, one loaded model
//! version with its pool of sessions, signatures read from graphs, and conversion between
//! protocol tensors and ORT values. The agent serves with it; the hub only inspects pushed
//! models with it (`inspect_model`), so neither needs the other.

mod conversion;
mod engine;
mod environment;
mod loaded_model;
mod session_pool;
mod signature;

pub use engine::{CostModel, Engine};
pub use environment::{RuntimeInitError, init_onnx_runtime};
pub use loaded_model::{LoadError, LoadedModel, SessionSettings, feature_map_path, inspect_model};
pub use session_pool::{InferError, NamedTensor};
pub use signature::{ModelSignature, TensorSpec};
