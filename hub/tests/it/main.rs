//! Integration tests of the hub: the real `flotilla-hub` and `flotilla` binaries, a real
//! SQLite file, real ONNX Runtime checks, over loopback HTTP.

mod fleet;
mod openapi;
mod registry;
mod rollouts;
mod support;
mod telemetry;
mod triggers;
