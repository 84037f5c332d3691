//! Drift between two numeric profiles, from sketches alone: effect sizes, not p-values
//! (docs/drift.md). Definitions, so results can be checked against raw data:
//! - KS: the largest gap between the two CDFs (L∞).
//! - Wasserstein/σ: ∫|F_ref − F_cur| dx, divided by the reference's standard deviation.
//! - PSI, Jensen–Shannon distance (natural log, square root of the divergence) and Hellinger
//!   distance over 10 equal-frequency bins of the reference (edges at its deciles).

/// Points at which both CDFs are compared: this many quantiles of each profile.
const GRID_QUANTILES: usize = 1000;
/// Equal-frequency bins of the reference for PSI, JS and Hellinger.
pub const BINS: usize = 10;
/// Floor for empty bins in PSI's logarithm.
const PSI_FLOOR: f64 = 1e-4;

use super::NumericProfile;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftScores {
    pub ks: f64,
    pub wasserstein_sigma: f64,
    pub psi: f64,
    pub js: f64,
    pub hellinger: f64,
}

/// Thresholds (Evidently's and SageMaker Model Monitor's defaults), configurable per model
/// and feature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftThresholds {
    pub ks: f64,
    pub js: f64,
    pub wasserstein_sigma: f64,
    pub psi_warn: f64,
    pub psi_alert: f64,
    /// No verdict below this many rows on either side.
    pub min_rows: u64,
}

impl Default for DriftThresholds {
    fn default() -> Self {
        DriftThresholds {
            ks: 0.1,
            js: 0.1,
            wasserstein_sigma: 0.1,
            psi_warn: 0.1,
            psi_alert: 0.25,
            min_rows: 1000,
        }
    }
}

/// Per-metric verdicts for one feature; `None` fields mean too few rows for a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureVerdict {
    pub ks: Option<bool>,
    pub js: Option<bool>,
    pub wasserstein: Option<bool>,
    /// 0 none, 1 warn, 2 alert.
    pub psi_level: Option<u8>,
    /// The feature's verdict: Wasserstein/σ, the default for numeric features with enough rows.
    pub drifted: Option<bool>,
}

pub fn verdict(
    scores: &DriftScores,
    reference_rows: u64,
    current_rows: u64,
    thresholds: &DriftThresholds,
) -> FeatureVerdict {
    if reference_rows < thresholds.min_rows || current_rows < thresholds.min_rows {
        return FeatureVerdict {
            ks: None,
            js: None,
            wasserstein: None,
            psi_level: None,
            drifted: None,
        };
    }
    let wasserstein = scores.wasserstein_sigma > thresholds.wasserstein_sigma;
    let psi_level = if scores.psi >= thresholds.psi_alert {
        2
    } else if scores.psi >= thresholds.psi_warn {
        1
    } else {
        0
    };
    FeatureVerdict {
        ks: Some(scores.ks > thresholds.ks),
        js: Some(scores.js > thresholds.js),
        wasserstein: Some(wasserstein),
        psi_level: Some(psi_level),
        drifted: Some(wasserstein),
    }
}

/// Sorted, distinct, finite f32 points.
fn grid(reference: &NumericProfile, current: &NumericProfile) -> Vec<f32> {
    let ranks: Vec<f64> = (0..=GRID_QUANTILES)
        .map(|i| i as f64 / GRID_QUANTILES as f64)
        .collect();
    let mut points: Vec<f32> = [reference.quantiles(&ranks), current.quantiles(&ranks)]
        .into_iter()
        .flatten()
        .flatten()
        .map(|v| v as f32)
        .filter(|v| v.is_finite())
        .collect();
    points.sort_by(f32::total_cmp);
    points.dedup();
    points
}

/// Bin proportions of `profile` over bins whose inner edges are `edges` (strictly increasing).
fn proportions(profile: &NumericProfile, edges: &[f32]) -> Option<Vec<f64>> {
    let cdf = profile.cdf(edges)?;
    let mut previous = 0.0;
    let mut out = Vec::with_capacity(edges.len() + 1);
    for c in cdf {
        out.push((c - previous).max(0.0));
        previous = c;
    }
    out.push((1.0 - previous).max(0.0));
    Some(out)
}

/// PSI, JS distance and Hellinger distance of two bin distributions.
pub fn binned_scores(p: &[f64], q: &[f64]) -> (f64, f64, f64) {
    let psi = p.iter().zip(q).map(|(&a, &b)| {
        let (a, b) = (a.max(PSI_FLOOR), b.max(PSI_FLOOR));
        (b - a) * (b / a).ln()
    });
    let kl = |x: &[f64], m: &[f64]| {
        x.iter()
            .zip(m)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, b)| a * (a / b).ln())
            .sum::<f64>()
    };
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a + b) / 2.0).collect();
    let js = ((kl(p, &m) + kl(q, &m)) / 2.0).max(0.0).sqrt();
    let hellinger = (p
        .iter()
        .zip(q)
        .map(|(a, b)| (a.sqrt() - b.sqrt()).powi(2))
        .sum::<f64>()
        / 2.0)
        .sqrt();
    (psi.sum(), js, hellinger)
}

/// Drift of `current` against `reference`; `None` when either has no valid values.
pub fn numeric_drift(reference: &NumericProfile, current: &NumericProfile) -> Option<DriftScores> {
    if reference.valid() == 0 || current.valid() == 0 {
        return None;
    }
    let points = grid(reference, current);
    let (f_ref, f_cur) = (reference.cdf(&points)?, current.cdf(&points)?);
    let ks = f_ref
        .iter()
        .zip(&f_cur)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    // Both CDFs are step functions that are constant between consecutive grid points (the
    // grid holds their quantiles), so this sum is the integral.
    let area: f64 = points
        .windows(2)
        .zip(f_ref.iter().zip(&f_cur))
        .map(|(w, (a, b))| (a - b).abs() * (w[1] as f64 - w[0] as f64))
        .sum();
    let sigma = reference.std_dev().unwrap_or(0.0);
    let wasserstein_sigma = if sigma > 0.0 {
        area / sigma
    } else if area > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    let bin_ranks: Vec<f64> = (1..BINS).map(|i| i as f64 / BINS as f64).collect();
    let mut edges: Vec<f32> = reference
        .quantiles(&bin_ranks)
        .unwrap_or_default()
        .into_iter()
        .map(|v| v as f32)
        .collect();
    edges.dedup();
    let (p, q) = (
        proportions(reference, &edges)?,
        proportions(current, &edges)?,
    );
    let (psi, js, hellinger) = binned_scores(&p, &q);
    Some(DriftScores {
        ks,
        wasserstein_sigma,
        psi,
        js,
        hellinger,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::numeric::DEVICE_K;

    fn profile(values: impl Iterator<Item = f32>) -> NumericProfile {
        let mut p = NumericProfile::new(DEVICE_K);
        values.for_each(|v| p.update(Some(v)));
        p
    }

    #[test]
    fn identical_data_shows_no_drift_and_a_shift_shows_drift() {
        let a = profile((0..20_000).map(|i| (i % 1000) as f32));
        let same = numeric_drift(&a, &a).unwrap();
        assert!(
            same.ks < 1e-9 && same.wasserstein_sigma < 1e-9 && same.psi < 1e-9 && same.js < 1e-9,
            "{same:?}"
        );
        let shifted = profile((0..20_000).map(|i| (i % 1000) as f32 + 300.0));
        let drift = numeric_drift(&a, &shifted).unwrap();
        assert!((drift.ks - 0.3).abs() < 0.03, "{drift:?}");
        // Uniform on [0, 1000): sigma ≈ 288.7, shift 300 → W/σ ≈ 1.04.
        assert!(
            (drift.wasserstein_sigma - 300.0 / 288.675).abs() < 0.03,
            "{drift:?}"
        );
        let v = verdict(&drift, 20_000, 20_000, &DriftThresholds::default());
        assert_eq!(
            (v.drifted, v.ks, v.psi_level),
            (Some(true), Some(true), Some(2))
        );
        let few = verdict(&drift, 999, 20_000, &DriftThresholds::default());
        assert_eq!(few.drifted, None, "no verdict under 1000 rows a side");
    }

    #[test]
    fn empty_profiles_have_no_scores() {
        assert!(
            numeric_drift(&NumericProfile::new(DEVICE_K), &profile([1.0].into_iter())).is_none()
        );
    }
}
