//! Flotilla's wire types: what crosses a process boundary, with no I/O of its own.
//!
//! `inference`: the Open Inference Protocol (KServe v2) spoken by the agent's local service.
//! `trust`: the signed documents of the trust model (root metadata, model manifests).
//! `control`: enrollment, desired and reported state, and MQTT topic names.
//! `telemetry`: feature maps and the telemetry topic.

pub mod control;
pub mod inference;
pub mod telemetry;
pub mod trust;
