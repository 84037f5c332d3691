//! The Flotilla hub as a library: the registry and its store, keys and signing, the CA of
//! device identity to come, the fleet, rollouts, telemetry, triggers, and the admin API
//! server (its contract is `flotilla-api`). `main.rs` (flotilla-hub) is a thin shell.

pub mod api;
pub mod backup;
pub mod broker_config;
pub mod ca;
pub mod config;
pub mod config_reference;
pub mod data_dir;
pub mod fleet;
pub mod metrics;
pub mod periodic;
pub mod registry;
pub mod rollout;
pub mod serve_command;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod triggers;
