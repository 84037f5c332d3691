//! fleet-sim: many real agent cores against a hub, in one process or several, with network
//! faults and drift injected. It drives the real agent and hub libraries (through the test
//! kit's `TestHub` and `TestAgent`) and has no production logic of its own: the scale
//! benchmark and end-to-end test bed.

pub mod chart;
pub mod demo;
pub mod fleet;
pub mod proxy;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod traffic;
pub mod worker;

pub use flotilla_testkit::{TestAgent, TestHub};
pub use runner::{HubTarget, RunOptions, run};
pub use scenario::Scenario;
