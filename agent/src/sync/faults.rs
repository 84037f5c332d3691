//! Faults a simulator injects into real installs (fleet-sim), kept apart so the install code
//! stays what a real device runs: each fault is a real failure the install steps must catch
//! (a damaged download, a destroyed model file, a wrong clock), not a made-up outcome.

use std::path::Path;

use flotilla_common::clock::{SharedClock, SkewedClock};

/// Faults injected into one device's installs; none on a real device.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InjectedFaults {
    /// Share of downloads damaged on disk after they arrive (one byte flipped): the artifact
    /// check must reject them.
    pub corrupt_download: f64,
    /// Share of installs whose model file is overwritten with garbage after the artifact
    /// check (a device whose storage fails under it): loading must reject them.
    pub unloadable_install: f64,
    /// How far the device's clock is off, in milliseconds (positive: ahead).
    pub clock_skew_ms: i64,
}

impl InjectedFaults {
    /// The device's clock: `base` moved by the injected skew, if any.
    pub fn device_clock(&self, base: SharedClock) -> SharedClock {
        SkewedClock::shared(base, self.clock_skew_ms)
    }
}

/// Whether a fault of `rate` (a share in [0, 1]) strikes this time.
pub(super) fn happens(rate: f64) -> bool {
    rate > 0.0 && flotilla_common::backoff::random_jitter() < rate
}

/// Flips one byte in the middle of a file.
pub(super) fn damage(path: &Path) -> std::io::Result<()> {
    let mut bytes = std::fs::read(path)?;
    if let Some(middle) = bytes.len().checked_div(2).filter(|_| !bytes.is_empty()) {
        bytes[middle] ^= 0x5a;
    }
    std::fs::write(path, bytes)
}

/// What an unloadable install leaves in place of the model file.
pub(super) const UNLOADABLE_MODEL_BYTES: &[u8] = b"injected fault: not a model";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_of_zero_never_strikes_and_one_always_does() {
        assert!((0..1000).all(|_| !happens(0.0)));
        assert!((0..1000).all(|_| happens(1.0)));
    }

    #[test]
    fn damage_flips_the_middle_byte_and_leaves_empty_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.part");
        std::fs::write(&path, [1u8, 2, 3, 4]).unwrap();
        damage(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), [1, 2, 3 ^ 0x5a, 4]);
        let empty = dir.path().join("empty.part");
        std::fs::write(&empty, []).unwrap();
        damage(&empty).unwrap();
        assert!(std::fs::read(&empty).unwrap().is_empty());
        assert!(damage(&dir.path().join("missing")).is_err());
    }
}
