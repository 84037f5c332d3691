//! Mergeable profiles of what a model sees, computed on devices (DESIGN.md section 6), and
//! drift metrics between two profiles, computed without raw data. Pure: no I/O.

mod drift;
mod numeric;

pub use drift::{
    BINS as BINS_FOR_TESTS, DriftScores, DriftThresholds, FeatureVerdict, binned_scores,
    numeric_drift, verdict,
};
pub use numeric::{DEVICE_K, NumericProfile, ProfileError, REFERENCE_K};
