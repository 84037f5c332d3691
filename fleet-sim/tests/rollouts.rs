//! Rollouts end to end on real agent cores and a real hub (fleet-sim/scenarios/rollouts.toml):
//! a healthy version goes out in three gated waves and moves the `production` alias; a broken
//! one fails its canary's error-rate gate and every device of it returns to the version before.

use std::path::Path;

use flotilla_sim::{RunOptions, Scenario, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_rollout_completes_and_a_broken_one_is_rolled_back() {
    let scenario =
        Scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/rollouts.toml"))
            .unwrap();
    let report = run(&scenario, RunOptions::embedded(), &|_| {})
        .await
        .unwrap();
    let summary = report.summary();
    let timeline: Vec<&str> = report.timeline.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(report.rollouts.len(), 2, "{summary}");
    let (healthy, broken) = (&report.rollouts[0], &report.rollouts[1]);
    assert_eq!(
        (healthy.version, healthy.phase.as_str()),
        (2, "completed"),
        "{summary}\n{timeline:#?}"
    );
    assert_eq!(healthy.installed, 60, "{summary}");
    for wave in 1..=3 {
        assert!(
            timeline
                .iter()
                .any(|e| e.starts_with("rollout.wave_passed")
                    && e.contains(&format!("wave {wave}:"))),
            "wave {wave} passed its gates: {timeline:#?}"
        );
    }
    assert!(
        timeline
            .iter()
            .any(|e| e.starts_with("rollout.alias_moved") && e.contains("production -> version 2")),
        "{timeline:#?}"
    );
    // The broken version: its canary wave (6 devices) fails on error rate, and all of them
    // are back on version 2.
    assert_eq!(
        (broken.version, broken.phase.as_str()),
        (3, "rolled_back"),
        "{summary}\n{timeline:#?}"
    );
    assert_eq!(broken.told, 6, "only the canary wave was told: {summary}");
    assert_eq!(broken.restored, broken.told, "{summary}");
    assert!(
        broken
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("error rate"),
        "{summary}"
    );
    assert!(broken.restored_at_seconds.is_some(), "{summary}");
    // Telemetry and requests still reconcile across three versions and a rollback.
    assert!(report.telemetry.reconciled, "{summary}");
    assert!(report.requests.reconciled, "{summary}");
    assert!(
        report.requests.failed > 0,
        "the broken canary failed requests: {summary}"
    );
}
