//! The device's wall clock. On a real device it is the system clock, right or wrong; a
//! simulator gives each simulated device its own skew (fleet-sim's clock-skew fault), so
//! the agent's time-dependent code (window times, expiry checks, report times) runs against
//! a clock that is off, as it would on a device whose clock drifted.

/// The system clock moved by a fixed skew.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceClock {
    /// Added to the system clock, in milliseconds (positive: the device is ahead).
    pub skew_ms: i64,
}

impl DeviceClock {
    pub fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
            .saturating_add(self.skew_ms)
    }

    pub fn now_unix(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skew_moves_the_clock() {
        let right = DeviceClock::default();
        let ahead = DeviceClock {
            skew_ms: 2 * 24 * 3600 * 1000,
        };
        let behind = DeviceClock { skew_ms: -90_000 };
        let (r, a, b) = (right.now_unix(), ahead.now_unix(), behind.now_unix());
        assert!((a - r - 2 * 24 * 3600).abs() <= 1, "{a} {r}");
        assert!((r - b - 90).abs() <= 1, "{r} {b}");
    }
}
