//! Jittered exponential backoff: retries spread out so a fleet that lost its hub at the same
//! moment does not come back at the same moment.

use std::time::Duration;

/// Delay before retry number `attempt` (0 for the first retry): `base * 2^attempt`, capped
/// at `max`, then scaled by `jitter` in [0, 1) to a value between half and all of it.
pub fn backoff_delay(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exponential = base.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX));
    let capped = exponential.min(max);
    capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A jitter value from the OS generator.
pub fn random_jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubles_caps_and_jitters_within_half() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(backoff_delay(0, base, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(3, base, max, 1.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(20, base, max, 1.0), max);
        assert_eq!(backoff_delay(u32::MAX, base, max, 1.0), max);
        assert_eq!(backoff_delay(3, base, max, 0.0), Duration::from_millis(400));
        let jitter = random_jitter();
        assert!((0.0..1.0).contains(&jitter));
    }
}
