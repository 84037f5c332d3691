//! Integration tests of flotilla-common on real data.

mod crate_graph;
mod docs_stand_alone;
mod drift_accuracy;
mod time_sources;
