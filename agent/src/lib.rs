//! The Flotilla device agent as a library: the inference runtime, the model repository and
//! the local Open Inference Protocol server. `main.rs` is a thin command-line shell over it,
//! and fleet-sim and the tests drive the same code in-process.

pub mod config;
pub mod config_reference;
pub mod install;
pub mod metrics;
pub mod repository;
pub mod run_command;
pub mod serve_command;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod transport;
