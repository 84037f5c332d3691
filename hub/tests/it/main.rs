//! Integration tests of the hub: the real `flotilla-hub` and `flotilla` binaries, a real
//! SQLite file, real ONNX Runtime checks, over loopback HTTP.

mod arm64;
mod backup;
mod broker_acl;
mod deploy_files;
mod fleet;
mod hostile;
mod mqtt_peer;
mod network;
mod openapi;
mod paused_rollouts;
mod paused_triggers;
mod registry;
mod rollouts;
mod simulated;
mod stopping;
mod support;
mod telemetry;
mod triggers;
