//! The Flotilla hub as a library: the registry and its store, keys and signing, the admin
//! API, and the client the `flotilla` CLI (and tests, and fleet-sim) use to drive it.
//! `main.rs` (flotilla-hub) and `bin/flotilla.rs` are thin command-line shells.

// The hand-written OpenAPI document is one large `json!` literal.
#![recursion_limit = "256"]

pub mod api;
pub mod cli;
pub mod cli_rollout;
pub mod cli_telemetry;
pub mod cli_trigger;
pub mod client;
pub mod data_dir;
pub mod fleet;
pub mod metrics;
pub mod quality;
pub mod registry;
pub mod rollout;
pub mod serve_command;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod triggers;
