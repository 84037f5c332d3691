//! Time, from one place. Library code never reads the operating system's clock itself: it
//! asks the `Clock` its caller passed in, so a test can set the time, fleet-sim can give each
//! simulated device a skewed clock, and a test on tokio's paused time can run minutes of
//! rollout soak in milliseconds (`TokioClock`). This file is the only one that reads
//! `SystemTime::now` or `std::time::Instant::now` (the repository's time check enforces it).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Wall-clock time: what signatures' expiry, telemetry windows, rollouts and triggers are
/// judged against.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Seconds since the Unix epoch (rounded down).
    fn now_unix(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// A clock shared by the parts of one process (or of one simulated device).
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock: what real devices and hubs run on.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Starts at `now_unix` seconds.
    pub fn new(now_unix: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now_unix.saturating_mul(1000)))
    }

    pub fn advance(&self, seconds: i64) {
        self.0
            .fetch_add(seconds.saturating_mul(1000), Ordering::SeqCst);
    }

    pub fn advance_ms(&self, milliseconds: i64) {
        self.0.fetch_add(milliseconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Wall-clock time that follows tokio's clock: a start time plus the tokio time elapsed
/// since. On tokio's paused time (`#[tokio::test(start_paused = true)]`,
/// `tokio::time::advance`) it jumps with the timers, so the wall-clock decisions (a soak
/// that must last ten minutes, a trigger cooldown) move together with the ticks that make
/// them. Made inside a runtime.
#[derive(Debug)]
pub struct TokioClock {
    start_ms: i64,
    started: tokio::time::Instant,
}

impl TokioClock {
    /// Starts at `start_unix` seconds, now.
    pub fn starting_at(start_unix: i64) -> TokioClock {
        TokioClock {
            start_ms: start_unix.saturating_mul(1000),
            started: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.started);
        self.start_ms.saturating_add(elapsed.as_millis() as i64)
    }
}

/// Another clock moved by a fixed skew: a device whose clock is ahead or behind. This is
/// how the agent's time-dependent code (window times, expiry checks, report times) runs
/// against a wrong clock, as it would on a device whose clock drifted.
#[derive(Debug, Clone)]
pub struct SkewedClock {
    pub inner: SharedClock,
    /// Added to the inner clock, in milliseconds (positive: ahead).
    pub skew_ms: i64,
}

impl SkewedClock {
    /// `inner` itself when there is no skew.
    pub fn shared(inner: SharedClock, skew_ms: i64) -> SharedClock {
        if skew_ms == 0 {
            inner
        } else {
            Arc::new(SkewedClock { inner, skew_ms })
        }
    }
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> i64 {
        self.inner.now_ms().saturating_add(self.skew_ms)
    }
}

/// How long a piece of work took, in real time. Not tokio's clock on purpose: the runtime
/// times ONNX Runtime runs to decide what may run inline, and latency telemetry reports
/// what a request cost; paused test time would report those as zero.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch(std::time::Instant::now())
    }

    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skew_moves_the_inner_clock() {
        let base: SharedClock = Arc::new(ManualClock::new(1_000_000));
        let ahead = SkewedClock::shared(base.clone(), 2 * 24 * 3600 * 1000);
        let behind = SkewedClock::shared(base.clone(), -90_000);
        assert_eq!(ahead.now_unix() - base.now_unix(), 2 * 24 * 3600);
        assert_eq!(base.now_unix() - behind.now_unix(), 90);
        assert_eq!(behind.now_ms(), 1_000_000_000 - 90_000);
    }

    #[test]
    fn a_manual_clock_moves_when_told() {
        let clock = ManualClock::new(100);
        clock.advance(5);
        clock.advance_ms(1500);
        assert_eq!(clock.now_ms(), 106_500);
        assert_eq!(clock.now_unix(), 106);
    }

    #[test]
    fn negative_times_round_down() {
        let clock = ManualClock::new(0);
        clock.advance_ms(-1);
        assert_eq!(clock.now_unix(), -1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_follows_paused_time() {
        let clock = TokioClock::starting_at(1_800_000_000);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(clock.now_unix(), 1_800_000_600);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now_ms(), 1_800_000_601_500);
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(SystemClock.now_unix() > 1_577_836_800);
    }
}
