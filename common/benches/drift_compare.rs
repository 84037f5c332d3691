//! One drift comparison (docs/BENCHMARKS.md): `numeric_drift` of a device's window (k = 200,
//! 1,200 rows) against a reference (k = 1,024, 3,000 rows), as the hub runs it per feature for
//! every drift report, gate and trigger window. The peer in the same run is the grid the way
//! it was built before (one `quantile` call per rank, each building the sketch's sorted view)
//! against the batch `quantiles` it uses now.
//!
//! `cargo bench -p flotilla-common --bench drift_compare -- [--rounds R]`

use std::time::Instant;

use flotilla_common::sketch::{DEVICE_K, NumericProfile, REFERENCE_K, numeric_drift};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn profile(k: u16, rows: usize, shift: f32) -> NumericProfile {
    let mut p = NumericProfile::new(k);
    // A deterministic spread of values (golden-ratio sequence), shifted.
    for i in 0..rows {
        p.update(Some(((i as f32 * 0.618_034) % 1.0) * 6.0 + 1.0 + shift));
    }
    p
}

fn main() {
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .map_or(9, |v| v.parse().expect("a number"));
    let reference = profile(REFERENCE_K, 3000, 0.0);
    let current = profile(DEVICE_K, 1200, 0.5);
    let ranks: Vec<f64> = (0..=1000).map(|i| i as f64 / 1000.0).collect();
    let (mut compare_us, mut single_us, mut batch_us) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let scores = numeric_drift(&reference, &current).expect("both have rows");
        compare_us.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(scores.ks > 0.0);
        let t = Instant::now();
        let single: Vec<f64> = ranks
            .iter()
            .flat_map(|&r| [reference.quantile(r), current.quantile(r)])
            .flatten()
            .collect();
        single_us.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let batch: Vec<f64> = [reference.quantiles(&ranks), current.quantiles(&ranks)]
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        batch_us.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(single.len(), batch.len());
    }
    let (compare, single, batch) = (median(compare_us), median(single_us), median(batch_us));
    println!(
        "numeric_drift (one feature): {compare:.0} µs; its 2,002-point grid: {single:.0} µs with one quantile call per rank (before), {batch:.0} µs batched (now), {:.0}x (median of {rounds})",
        single / batch
    );
}
