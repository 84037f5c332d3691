//! Retraining triggers on tokio's paused time: the real evaluator judges each device's
//! telemetry windows against the reference, window after window, and the cooldown holds for
//! its simulated hour, in well under a second of test time.

use std::time::Duration;

use flotilla_api::telemetry::{ModelThresholds, ThresholdOverrides};
use flotilla_api::triggers::{RunStatus, TriggerReason, TriggerRule, TriggerRun};

use crate::simulated::SimulatedHub;

const WINDOW: Duration = Duration::from_secs(60);

/// Drift on half the fleet for three windows in a row fires; then an hour's cooldown.
fn rule() -> TriggerRule {
    TriggerRule::from_toml(
        "window_seconds = 60\ncooldown_seconds = 3600\nsettle_seconds = 5\n\
         [drift]\nconsecutive_windows = 3\ndevice_percent = 50\nmin_devices = 2\n\
         [action.command]\nargv = [\"true\"]\ntimeout_seconds = 600",
    )
    .unwrap()
}

/// The evaluator judges windows that ended at least the rule's `settle_seconds` ago.
const SETTLE: Duration = Duration::from_secs(6);

/// One simulated minute, from just after one window boundary to just after the next: each
/// device sends the window that closed (petal features moved by `shift` on the first
/// `drifting` devices), then the evaluator runs.
async fn minute(hub: &mut SimulatedHub, drifting: usize, shift: f32) -> Vec<TriggerRun> {
    tokio::time::advance(WINDOW - SETTLE).await;
    assert_eq!(hub.clock_seconds() % 60, 0, "windows close on the minute");
    hub.send_windows_shifted(WINDOW, 400, |d| if d < drifting { shift } else { 0.0 });
    tokio::time::advance(SETTLE).await;
    let (triggers, now_ms) = (hub.triggers.clone(), hub.registry.now_ms());
    let fired = tokio::task::spawn_blocking(move || triggers.evaluate(now_ms))
        .await
        .unwrap()
        .unwrap();
    // Let a fired run's command finish (real time: the command is a real process).
    for run in &fired {
        wait_done(hub, &run.id).await;
    }
    fired
}

async fn wait_done(hub: &SimulatedHub, id: &str) {
    for _ in 0..500 {
        let triggers = hub.triggers.clone();
        let id = id.to_owned();
        let run = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(10));
            triggers.run(&id).unwrap()
        })
        .await
        .unwrap();
        if !run.status.in_flight() {
            assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
            return;
        }
    }
    panic!("trigger run {id} never finished");
}

#[tokio::test(start_paused = true)]
async fn drift_fires_after_its_streak_and_not_again_within_the_cooldown() {
    let mut hub = SimulatedHub::start(4).await;
    hub.registry
        .set_alias("iris", "production", "1", "test")
        .unwrap();
    // 400 requests of three rows a window: a verdict needs 100 rows a side here.
    let thresholds = ModelThresholds {
        default: ThresholdOverrides {
            min_rows: Some(100),
            ..ThresholdOverrides::default()
        },
        ..ModelThresholds::default()
    };
    hub.telemetry.set_thresholds("iris", &thresholds).unwrap();
    hub.triggers.set_rule("iris", &rule(), "test").unwrap();
    let started = hub.clock_seconds();
    tokio::time::advance(SETTLE).await;

    // Ten quiet minutes, then one drifting device of four (25%, under the rule's 50%).
    for _ in 0..10 {
        assert!(minute(&mut hub, 0, 0.0).await.is_empty());
    }
    for _ in 0..5 {
        assert!(minute(&mut hub, 1, 3.0).await.is_empty());
    }
    // Half the fleet drifts: the third window in a row fires, once.
    let mut fired_at_minute = None;
    let mut runs = Vec::new();
    for m in 1..=50 {
        let fired = minute(&mut hub, 2, 3.0).await;
        if !fired.is_empty() {
            fired_at_minute.get_or_insert(m);
        }
        runs.extend(fired);
    }
    assert_eq!(fired_at_minute, Some(3), "{runs:#?}");
    assert_eq!(
        runs.len(),
        1,
        "50 drifting minutes inside the cooldown fire once"
    );
    let first = &runs[0];
    assert_eq!(first.reason, TriggerReason::Drift);
    assert_eq!(
        first.payload.evidence.len(),
        3,
        "the streak's three windows"
    );
    assert!(
        first
            .payload
            .evidence
            .iter()
            .all(|w| (w.judged_devices, w.drifting_devices) == (4, 2)),
        "{:?}",
        first.payload.evidence
    );
    // The hour runs out while the drift goes on: the next full streak fires again.
    let mut second = None;
    for m in 51..=80 {
        if let Some(run) = minute(&mut hub, 2, 3.0).await.pop() {
            second = Some((m, run));
            break;
        }
    }
    let (minute_of_second, second) = second.expect("the trigger fires again after its cooldown");
    assert!(
        second.fired_at >= first.fired_at + 3600,
        "fired {} s after the first",
        second.fired_at - first.fired_at
    );
    assert!(minute_of_second <= 66, "{minute_of_second}");
    let history = hub.triggers.runs(Some("iris"), 10).unwrap();
    assert_eq!(history.len(), 2, "{history:#?}");
    // Well over an hour of simulated time.
    let simulated = hub.clock_seconds() - started;
    assert!(simulated >= 75 * 60, "{simulated} s");
}
