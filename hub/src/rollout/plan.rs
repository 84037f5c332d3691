//! Which devices are in which wave, and how many may start now. Pure.
//!
//! Membership is stable and deterministic: the targets are ordered by a hash of the rollout
//! id and the device id, and wave k is the first `ceil(share_k × targets)` of that order, so
//! every wave is a superset of the one before, the same rollout always picks the same
//! devices, and two rollouts pick different canaries.

use sha2::{Digest, Sha256};

use flotilla_api::rollouts::RateLimit;

/// The rank of a device in a rollout's order.
fn rank(rollout_id: &str, device_id: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(rollout_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(device_id.as_bytes());
    hasher.finalize().into()
}

/// The targets in wave order.
pub fn wave_order(rollout_id: &str, targets: &[String]) -> Vec<String> {
    let mut ranked: Vec<([u8; 32], &String)> =
        targets.iter().map(|d| (rank(rollout_id, d), d)).collect();
    ranked.sort();
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().map(|(_, d)| d.clone()).collect()
}

/// How many of `targets` devices waves `1..=wave` hold (cumulative; at least one device
/// from the first wave on).
pub fn wave_size(waves: &[f64], wave: usize, targets: usize) -> usize {
    if wave == 0 || targets == 0 {
        return 0;
    }
    let share = waves[(wave - 1).min(waves.len() - 1)];
    (((share / 100.0) * targets as f64).ceil() as usize).clamp(1, targets)
}

/// How many devices may have been told to install `minutes` after the rollout started
/// (constant rate, or growing by `factor` each minute up to the maximum); `None`: no limit.
pub fn rate_allowance(rate: &RateLimit, minutes: f64) -> Option<usize> {
    if rate.devices_per_minute == 0 {
        return None;
    }
    let cap = rate.max_per_minute.unwrap_or(u64::MAX) as f64;
    let mut total = 0.0;
    let mut per_minute = rate.devices_per_minute as f64;
    let whole = minutes.floor() as u64;
    for _ in 0..whole.min(100_000) {
        total += per_minute.min(cap);
        per_minute *= rate.factor;
    }
    total += per_minute.min(cap) * (minutes - whole as f64);
    // The first devices go at once: a rate limits how fast more follow.
    Some((total as usize).max(rate.devices_per_minute as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn devices(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("dev-{i:04}")).collect()
    }

    #[test]
    fn waves_are_cumulative_shares_rounded_up() {
        let waves = [1.0, 10.0, 50.0, 100.0];
        assert_eq!(
            (0..=4)
                .map(|w| wave_size(&waves, w, 1000))
                .collect::<Vec<_>>(),
            [0, 10, 100, 500, 1000]
        );
        // A 1% canary of 20 devices is still one device.
        assert_eq!(wave_size(&waves, 1, 20), 1);
    }

    #[test]
    fn different_rollouts_pick_different_canaries_the_same_one_always_the_same() {
        let targets = devices(500);
        let a = wave_order("r1", &targets);
        assert_eq!(a, wave_order("r1", &targets));
        assert_ne!(a[..5], wave_order("r2", &targets)[..5]);
    }

    #[test]
    fn rates_are_constant_or_exponential_up_to_a_cap() {
        let constant = RateLimit {
            devices_per_minute: 10,
            factor: 1.0,
            max_per_minute: None,
        };
        assert_eq!(rate_allowance(&constant, 0.0), Some(10));
        assert_eq!(rate_allowance(&constant, 3.0), Some(30));
        let exponential = RateLimit {
            devices_per_minute: 10,
            factor: 2.0,
            max_per_minute: Some(50),
        };
        // 10 + 20 + 40 + 50 + 50
        assert_eq!(rate_allowance(&exponential, 5.0), Some(170));
        assert_eq!(rate_allowance(&RateLimit::default(), 5.0), None);
    }

    proptest! {
        #[test]
        fn each_wave_is_a_superset_of_the_one_before(
            n in 1usize..400,
            id in "[a-z0-9]{1,12}",
            mut shares in proptest::collection::vec(0.1f64..100.0, 1..6),
        ) {
            shares.sort_by(|a, b| a.total_cmp(b));
            shares.dedup();
            shares.push(100.0);
            let order = wave_order(&id, &devices(n));
            prop_assert_eq!(order.len(), n);
            let mut previous: &[String] = &[];
            for wave in 1..=shares.len() {
                let members = &order[..wave_size(&shares, wave, n)];
                prop_assert!(members.starts_with(previous));
                prop_assert!(members.len() >= previous.len());
                previous = members;
            }
            prop_assert_eq!(previous.len(), n);
        }
    }
}
