//! Rollout soaks and gates on tokio's paused time: the real controller and stores, driven
//! tick by tick through ten-minute soaks in milliseconds. Each test follows the hub's clock
//! (`TokioClock`), so "the wave may not pass before its soak is over" is checked against
//! simulated minutes, not against a test that happens to be slow.

use std::time::Duration;

use flotilla_api::rollouts::{RolloutPhase, RolloutSpec, RolloutView};

use crate::simulated::SimulatedHub;

const TICK: Duration = Duration::from_secs(30);

fn spec(extra: serde_json::Value) -> RolloutSpec {
    let mut spec = serde_json::json!({
        "model": "iris", "version": "2", "waves": [50, 100], "soak_seconds": 600,
        "install_timeout_seconds": 900,
        "gates": {"min_requests": 100, "latency_p99_ratio_max": 1.5,
                  "input_drift_features_max": 4, "prediction_drift_max": 4}
    });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    serde_json::from_value(spec).unwrap()
}

/// One controller step after `TICK` of simulated time, in which every device installed what
/// it was told and sent a window of 20 requests: none failed on version 1, `errors_on_v2`
/// on version 2.
async fn tick(hub: &mut SimulatedHub, id: &str, errors_on_v2: u64) -> RolloutView {
    tokio::time::advance(TICK).await;
    hub.devices_follow();
    let on_v2: Vec<bool> = (0..hub.devices.len())
        .map(|d| hub.serving(d) == Some(2))
        .collect();
    hub.send_windows_with(TICK, |d| (20, if on_v2[d] { errors_on_v2 } else { 0 }));
    hub.rollouts.tick().await;
    hub.rollouts.get(id).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_wave_soaks_its_full_time_before_the_next_and_the_alias_moves_at_the_end() {
    let mut hub = SimulatedHub::start(10).await;
    let started = hub.clock_seconds();
    let view = hub
        .rollouts
        .create(spec(serde_json::json!({})), "test")
        .await
        .unwrap();
    assert_eq!((view.phase, view.wave), (RolloutPhase::Running, 1));
    assert_eq!(view.wave_sizes, [5, 10]);
    let id = view.id.clone();
    // Wave 1: five devices told at once, installed on the next step; then ten minutes of
    // soak in which the wave may not pass however healthy it is.
    let mut view = tick(&mut hub, &id, 0).await;
    let soak_from = view.installs_met_at.expect("installs met");
    while view.wave == 1 {
        assert!(
            hub.clock_seconds() < soak_from + 600 + 2 * TICK.as_secs() as i64,
            "wave 1 still waits {} s after its installs met: {view:?}",
            hub.clock_seconds() - soak_from
        );
        view = tick(&mut hub, &id, 0).await;
        if view.wave == 1 {
            assert!(
                hub.clock_seconds() < soak_from + 600 || !view.gates.is_empty(),
                "{view:?}"
            );
        }
    }
    let passed_at = hub.clock_seconds();
    assert!(
        passed_at >= soak_from + 600,
        "wave 1 passed {} s into a 600 s soak",
        passed_at - soak_from
    );
    assert_eq!(view.wave, 2, "{view:?}");
    // Wave 2 soaks too, then the rollout completes and production moves.
    while view.phase.is_active() {
        assert!(hub.clock_seconds() - started < 3600, "{view:?}");
        view = tick(&mut hub, &id, 0).await;
    }
    assert_eq!(view.phase, RolloutPhase::Completed, "{view:?}");
    assert_eq!(view.installed, 10);
    assert!(hub.clock_seconds() >= passed_at + 600, "wave 2 soaked too");
    let aliases = hub.registry.store().aliases("iris").unwrap();
    assert_eq!(aliases.get("production"), Some(&2));
    // All of it took about 20 simulated minutes.
    let simulated = hub.clock_seconds() - started;
    assert!((1200..1400).contains(&simulated), "{simulated} s");
}

#[tokio::test(start_paused = true)]
async fn a_failing_gate_rolls_the_wave_back_when_its_soak_ends() {
    let mut hub = SimulatedHub::start(10).await;
    let view = hub
        .rollouts
        .create(spec(serde_json::json!({})), "test")
        .await
        .unwrap();
    let id = view.id.clone();
    let mut view = tick(&mut hub, &id, 10).await;
    let soak_from = view.installs_met_at.expect("installs met");
    while view.phase == RolloutPhase::Running {
        assert!(hub.clock_seconds() < soak_from + 900, "{view:?}");
        view = tick(&mut hub, &id, 10).await;
    }
    // Half the new cohort's requests fail: the error-rate gate fails once the soak is over
    // (the wave is judged then, not on its first bad window), and the wave goes back.
    assert!(hub.clock_seconds() >= soak_from + 600, "{view:?}");
    assert!(
        matches!(
            view.phase,
            RolloutPhase::RollingBack | RolloutPhase::RolledBack
        ),
        "{view:?}"
    );
    assert!(
        view.reason.as_deref().unwrap_or("").contains("error rate"),
        "{view:?}"
    );
    while view.phase == RolloutPhase::RollingBack {
        view = tick(&mut hub, &id, 10).await;
    }
    assert_eq!(view.phase, RolloutPhase::RolledBack, "{view:?}");
    assert_eq!(view.restored, 5, "{view:?}");
    for d in 0..10 {
        assert_eq!(hub.serving(d), Some(1), "device {d} is back on version 1");
    }
    assert_eq!(view.wave, 1, "the second wave never started");
}

#[tokio::test(start_paused = true)]
async fn too_little_traffic_keeps_a_wave_waiting_past_its_soak_with_the_reason() {
    let mut hub = SimulatedHub::start(4).await;
    let gates = serde_json::json!({"gates": {"min_requests": 100_000}});
    let view = hub.rollouts.create(spec(gates), "test").await.unwrap();
    let id = view.id.clone();
    let mut view = tick(&mut hub, &id, 0).await;
    let soak_from = view.installs_met_at.expect("installs met");
    while hub.clock_seconds() < soak_from + 1800 {
        view = tick(&mut hub, &id, 0).await;
        assert_eq!(
            (view.phase, view.wave),
            (RolloutPhase::Running, 1),
            "{view:?}"
        );
    }
    // Half an hour past a ten-minute soak, the wave still waits, and says why.
    let reason = view.reason.unwrap_or_default();
    assert!(reason.contains("waiting"), "{reason}");
    assert!(
        reason.contains("fewer than the 100000 a verdict needs"),
        "{reason}"
    );
}
