//! When a trigger fires: streaks of bad windows per condition, then cooldown and
//! de-duplication. Pure: the service feeds it one observation per evaluation window and the
//! history it has stored.

use serde::{Deserialize, Serialize};

use super::rule::TriggerRule;

pub use flotilla_api::triggers::{Observation, TriggerReason as Reason};

/// The consecutive bad windows so far, per condition, for one version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Streaks {
    pub version: Option<u64>,
    pub drift: u32,
    pub error_rate: u32,
    /// The bad windows of each current streak (inconclusive ones left out): the evidence a
    /// fired trigger carries.
    pub drift_windows: Vec<Observation>,
    pub error_windows: Vec<Observation>,
}

impl Streaks {
    /// The windows that made `reason` fire.
    pub fn evidence(&self, reason: Reason) -> &[Observation] {
        match reason {
            Reason::Drift => &self.drift_windows,
            Reason::ErrorRate => &self.error_windows,
            Reason::Manual => &[],
        }
    }
}

/// How a window counts for a condition.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Bad,
    Good,
    /// Too little data: the streak neither grows nor breaks.
    Inconclusive,
}

fn drift_verdict(rule: &TriggerRule, o: &Observation) -> Option<Verdict> {
    let drift = rule.drift.as_ref()?;
    Some(match o.drifting_percent() {
        Some(_) if o.judged_devices < drift.min_devices => Verdict::Inconclusive,
        Some(p) if p >= drift.device_percent => Verdict::Bad,
        Some(_) => Verdict::Good,
        None => Verdict::Inconclusive,
    })
}

fn error_verdict(rule: &TriggerRule, o: &Observation) -> Option<Verdict> {
    let condition = rule.error_rate.as_ref()?;
    Some(match o.error_rate() {
        _ if o.requests < condition.min_requests => Verdict::Inconclusive,
        Some(rate) if rate > condition.above => Verdict::Bad,
        _ => Verdict::Good,
    })
}

/// One condition's streak after a window: a bad window extends it (and joins its evidence,
/// of which the last `keep` are kept), a good one breaks it, an inconclusive one leaves it.
fn advance(
    streak: u32,
    windows: &mut Vec<Observation>,
    verdict: Option<Verdict>,
    observation: &Observation,
    keep: u32,
) -> u32 {
    match verdict {
        Some(Verdict::Bad) => {
            windows.push(observation.clone());
            if windows.len() > keep as usize {
                windows.remove(0);
            }
            streak + 1
        }
        Some(Verdict::Good) | None => {
            windows.clear();
            0
        }
        Some(Verdict::Inconclusive) => streak,
    }
}

/// Adds one window. Returns the updated streaks and the condition whose streak reached its
/// length, if any (drift before error rate). A new version starts from nothing.
pub fn observe(
    rule: &TriggerRule,
    streaks: &Streaks,
    observation: Observation,
) -> (Streaks, Option<Reason>) {
    let mut next = if streaks.version == Some(observation.version) {
        streaks.clone()
    } else {
        Streaks {
            version: Some(observation.version),
            ..Streaks::default()
        }
    };
    next.drift = advance(
        next.drift,
        &mut next.drift_windows,
        drift_verdict(rule, &observation),
        &observation,
        rule.drift.as_ref().map_or(0, |d| d.consecutive_windows),
    );
    next.error_rate = advance(
        next.error_rate,
        &mut next.error_windows,
        error_verdict(rule, &observation),
        &observation,
        rule.error_rate
            .as_ref()
            .map_or(0, |e| e.consecutive_windows),
    );
    let reason = if rule
        .drift
        .as_ref()
        .is_some_and(|d| next.drift >= d.consecutive_windows)
    {
        Some(Reason::Drift)
    } else if rule
        .error_rate
        .as_ref()
        .is_some_and(|e| next.error_rate >= e.consecutive_windows)
    {
        Some(Reason::ErrorRate)
    } else {
        None
    };
    (next, reason)
}

/// After firing, each condition needs a full streak again.
pub fn after_firing(streaks: &Streaks) -> Streaks {
    Streaks {
        version: streaks.version,
        ..Streaks::default()
    }
}

/// The stored history a firing is checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct History {
    /// When the model's last trigger fired (seconds).
    pub last_fired: Option<i64>,
    /// A run of the model that has not finished (delivering, retrying or running).
    pub in_flight: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "suppressed", rename_all = "snake_case")]
pub enum Suppressed {
    /// One run at a time per model: a second would duplicate the retraining.
    InFlight,
    CoolingDown {
        until: i64,
    },
}

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Suppressed::InFlight => write!(
                f,
                "a trigger run of this model is still in flight; it is not started twice"
            ),
            Suppressed::CoolingDown { until } => {
                write!(
                    f,
                    "the trigger is cooling down until {until} (unix seconds)"
                )
            }
        }
    }
}

/// Whether a trigger for `reason` may start a run now. Manual firing skips the cooldown
/// (an operator asked) but never runs beside an unfinished run.
pub fn may_fire(
    rule: &TriggerRule,
    reason: Reason,
    history: History,
    now: i64,
) -> Result<(), Suppressed> {
    if history.in_flight {
        return Err(Suppressed::InFlight);
    }
    if reason != Reason::Manual
        && let Some(last) = history.last_fired
    {
        let until = last + rule.cooldown_seconds as i64;
        if now < until {
            return Err(Suppressed::CoolingDown { until });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule() -> TriggerRule {
        TriggerRule::from_toml(
            "cooldown_seconds = 100\n\
             [drift]\nconsecutive_windows = 3\ndevice_percent = 50\nmin_devices = 2\n\
             [error_rate]\nabove = 0.1\nconsecutive_windows = 2\nmin_requests = 10\n\
             [action.command]\nargv = [\"true\"]",
        )
        .unwrap()
    }

    fn window(version: u64, judged: u64, drifting: u64, requests: u64, errors: u64) -> Observation {
        Observation {
            version,
            judged_devices: judged,
            drifting_devices: drifting,
            reporting_devices: judged,
            requests,
            errors,
            ..Observation::default()
        }
    }

    fn feed(rule: &TriggerRule, windows: &[Observation]) -> (Streaks, Vec<Option<Reason>>) {
        let mut streaks = Streaks::default();
        let mut reasons = Vec::new();
        for w in windows {
            let (next, reason) = observe(rule, &streaks, w.clone());
            streaks = if reason.is_some() {
                after_firing(&next)
            } else {
                next
            };
            reasons.push(reason);
        }
        (streaks, reasons)
    }

    #[test]
    fn drift_fires_after_k_consecutive_bad_windows() {
        let bad = window(1, 4, 2, 50, 0);
        let (_, reasons) = feed(&rule(), &[bad.clone(), bad.clone(), bad]);
        assert_eq!(reasons, [None, None, Some(Reason::Drift)]);
    }

    #[test]
    fn a_good_window_breaks_the_streak_and_a_thin_one_does_not() {
        let bad = window(1, 4, 3, 50, 0);
        let good = window(1, 4, 1, 50, 0);
        let thin = window(1, 1, 1, 50, 0); // one judged device: below min_devices
        let empty = window(1, 0, 0, 0, 0);
        let (_, reasons) = feed(
            &rule(),
            &[
                bad.clone(),
                bad.clone(),
                good,
                bad.clone(),
                thin,
                empty,
                bad.clone(),
                bad,
            ],
        );
        assert_eq!(
            reasons,
            [
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                Some(Reason::Drift)
            ]
        );
    }

    #[test]
    fn error_rate_fires_and_needs_enough_requests() {
        let failing = window(1, 0, 0, 100, 20);
        let few = window(1, 0, 0, 5, 5);
        let (_, reasons) = feed(&rule(), &[failing.clone(), few, failing]);
        assert_eq!(reasons, [None, None, Some(Reason::ErrorRate)]);
    }

    #[test]
    fn a_new_version_starts_its_streaks_from_nothing() {
        let bad1 = window(1, 4, 4, 50, 0);
        let bad2 = window(2, 4, 4, 50, 0);
        let (streaks, reasons) = feed(&rule(), &[bad1.clone(), bad1, bad2]);
        assert_eq!(reasons, [None, None, None]);
        assert_eq!((streaks.version, streaks.drift), (Some(2), 1));
    }

    #[test]
    fn the_evidence_is_the_bad_windows_of_the_firing_streak() {
        let bad = |t| Observation {
            since_ms: t,
            ..window(1, 4, 4, 50, 0)
        };
        let thin = window(1, 1, 1, 50, 0);
        let good = window(1, 4, 0, 50, 0);
        let mut streaks = Streaks::default();
        let mut fired = None;
        for w in [bad(1), good, bad(2), thin, bad(3), bad(4)] {
            let (next, reason) = observe(&rule(), &streaks, w);
            streaks = next;
            fired = fired.or(reason);
        }
        assert_eq!(fired, Some(Reason::Drift));
        let times: Vec<i64> = streaks
            .evidence(Reason::Drift)
            .iter()
            .map(|o| o.since_ms)
            .collect();
        assert_eq!(
            times,
            [2, 3, 4],
            "no window before the good one, no thin one"
        );
        assert!(streaks.evidence(Reason::ErrorRate).is_empty());
    }

    #[test]
    fn cooldown_and_in_flight_suppress_firing() {
        let rule = rule();
        let fresh = History::default();
        assert_eq!(may_fire(&rule, Reason::Drift, fresh, 1000), Ok(()));
        let recent = History {
            last_fired: Some(950),
            in_flight: false,
        };
        assert_eq!(
            may_fire(&rule, Reason::Drift, recent, 1000),
            Err(Suppressed::CoolingDown { until: 1050 })
        );
        assert_eq!(may_fire(&rule, Reason::Drift, recent, 1050), Ok(()));
        assert_eq!(may_fire(&rule, Reason::Manual, recent, 1000), Ok(()));
        let busy = History {
            last_fired: Some(0),
            in_flight: true,
        };
        assert_eq!(
            may_fire(&rule, Reason::Manual, busy, 1000),
            Err(Suppressed::InFlight)
        );
    }

    proptest! {
        /// However windows come, a condition fires only after at least K windows of its
        /// version, and never on a window that is not bad for it.
        #[test]
        fn firing_needs_a_full_streak(
            windows in proptest::collection::vec((1u64..3, 0u64..6, 0u64..6, 0u64..200, 0u64..200), 0..60)
        ) {
            let rule = rule();
            let mut streaks = Streaks::default();
            let mut since_version_change = 0u32;
            let mut last_version = None;
            for (version, judged, drifting, requests, errors) in windows {
                let w = window(version, judged, drifting.min(judged), requests, errors.min(requests));
                if last_version != Some(version) {
                    since_version_change = 0;
                    last_version = Some(version);
                }
                since_version_change += 1;
                let (next, reason) = observe(&rule, &streaks, w.clone());
                match reason {
                    Some(Reason::Drift) => {
                        prop_assert!(since_version_change >= 3);
                        prop_assert!(w.drifting_percent().unwrap() >= 50.0);
                        streaks = after_firing(&next);
                    }
                    Some(Reason::ErrorRate) => {
                        prop_assert!(since_version_change >= 2);
                        prop_assert!(w.error_rate().unwrap() > 0.1);
                        streaks = after_firing(&next);
                    }
                    Some(Reason::Manual) => prop_assert!(false, "windows never fire manually"),
                    None => streaks = next,
                }
            }
        }
    }
}
