//! Mergeable profiles of what a model sees, computed on devices (docs/drift.md), and
//! drift metrics between two profiles, computed without raw data. Pure: no I/O.

mod categorical;
mod drift;
mod envelope;
mod numeric;
mod profile;

pub use categorical::{CategoricalProfile, EXACT_LIMIT, categorical_drift};
pub use drift::{
    BINS as BINS_FOR_TESTS, DriftScores, DriftThresholds, FeatureVerdict, binned_scores,
    numeric_drift, verdict,
};
pub use envelope::{FORMAT_VERSION, Kind, ProfileError};
pub use numeric::{DEVICE_K, NumericProfile, REFERENCE_K, SCORE_K};
pub use profile::Profile;
