//! Flotilla's wire types: what crosses a process boundary, with no I/O of its own.
//!
//! `inference`: the Open Inference Protocol (KServe v2) spoken by the agent's local service.
//! `trust`: the signed documents of the trust model (root metadata, model manifests).
//! Control-plane messages and topic names join them with the hub's transport.

pub mod inference;
pub mod trust;
