//! Flotilla's wire types: what crosses a process boundary, with no I/O of its own.
//!
//! Today that is the Open Inference Protocol (KServe v2) spoken by the agent's local
//! inference service; the control-plane messages and topic names join it with the hub.

pub mod inference;
