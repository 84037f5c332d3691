//! Logic shared by the agent and the hub that needs no network or database: where to find
//! ONNX Runtime, and loading TOML config files with errors that name the file. Signing,
//! sketches and drift metrics join it with their issues.

pub mod config_file;
pub mod onnx_runtime_library;
