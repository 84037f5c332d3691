//! fleet-sim: many real agent cores against a hub, in one process, with network faults and
//! drift injected (DESIGN.md section 2: it drives the real agent and hub libraries and has
//! no production logic of its own). The scale benchmark and end-to-end test bed.

pub mod chart;
pub mod demo;
pub mod embedded_hub;
pub mod fleet;
pub mod proxy;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod test_agent;
pub mod traffic;
pub mod worker;

pub use embedded_hub::TestHub;
pub use runner::{HubTarget, RunOptions, run};
pub use scenario::Scenario;
pub use test_agent::TestAgent;
