//! Integration tests of flotilla-common on real data.

mod drift_accuracy;
mod time_sources;
