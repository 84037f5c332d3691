//! Logic shared by the agent and the hub that needs no network or database: signing and
//! trust decisions, where to find ONNX Runtime, systemd notifications, and loading TOML config files with errors
//! that name the file. Sketches, drift metrics and the telemetry
//! batch format live here too.

pub mod artifact_protocol;
pub mod backoff;
pub mod clock;
pub mod codec;
pub mod compression;
pub mod config_file;
pub mod config_reference;
#[cfg(feature = "server")]
pub mod connection_cap;
pub mod onnx_runtime_library;
pub mod retry;
pub mod signing;
pub mod sketch;
#[cfg(feature = "server")]
pub mod systemd;
pub mod telemetry;
pub mod trust;
