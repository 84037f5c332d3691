//! The hub's admin API contract, shared by the hub (which serves it), the `flotilla` CLI,
//! fleet-sim and the tests (which call it): typed requests and responses for every
//! endpoint, the documents operators write (rollout specs, trigger rules, quality gates),
//! label selectors and durations parsed once, the `AdminClient`, and the one HTTP/1 client
//! every Flotilla program uses. No servers, no SQL, no ONNX Runtime.
//!
//! Each resource's module holds its types and the `AdminClient` methods that carry them.

pub mod admin;
pub mod client;
pub mod devices;
pub mod duration;
pub mod error;
pub mod http;
pub mod models;
pub mod quality;
pub mod rollouts;
pub mod selector;
pub mod telemetry;
pub mod tls;
pub mod triggers;

pub use client::{AdminClient, ClientError};
pub use error::ErrorBody;
pub use selector::{LabelSelector, Labels};
