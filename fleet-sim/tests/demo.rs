//! The README's main command, end to end at a smaller size (`flotilla-sim demo --devices 20`
//! runs the same code): the real hub, agent cores, one real `flotilla-agent` process, the real
//! retraining job in Python. Version 1 completes its waves; drift fires the trigger once; the
//! retrained candidate passes the quality gate and its canary completes; the broken version
//! is rolled back and the real agent serves the retrained one again.

use std::path::Path;
use std::time::Duration;

use flotilla_api::rollouts::RolloutPhase;
use flotilla_api::triggers::{RunStatus, TriggerReason, TriggerRunQuery};
use flotilla_sim::demo::{DemoOptions, run};
use flotilla_testkit::workspace_binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_whole_loop() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let options = DemoOptions {
        scenario: repo.join("fleet-sim/scenarios/demo.toml"),
        devices: Some(20),
        python: repo.join(".cache/venv/bin/python"),
        retrain_script: repo.join("deploy/demo/retrain.py"),
        flotilla_cli: workspace_binary("flotilla"),
        agent_exe: workspace_binary("flotilla-agent"),
        broken_model: repo.join("agent/tests/fixtures/iris_classifier_broken.onnx"),
        step_timeout: Duration::from_secs(240),
    };
    let demo = run(&options).await.unwrap();
    let outcome = demo.outcome.clone();
    assert_eq!(
        outcome.rollouts,
        [
            (1, RolloutPhase::Completed),
            (2, RolloutPhase::Completed),
            (3, RolloutPhase::RolledBack)
        ],
        "{outcome:#?}"
    );
    let run = outcome.trigger_run.clone().expect("the trigger ran");
    assert_eq!(run.reason, TriggerReason::Drift, "{outcome:#?}");
    assert_eq!(run.status, RunStatus::Succeeded, "{outcome:#?}");
    assert_eq!(outcome.agent_serves, Some(2), "{outcome:#?}");
    // One run for the whole drift: the cooldown holds while the drift goes on.
    let client = flotilla_testkit::admin_client(
        &outcome.hub_url,
        Some(outcome.operator_token.clone()),
        Some(&outcome.hub_ca_pem),
    )
    .unwrap();
    let runs = client
        .trigger_runs(&TriggerRunQuery {
            model: Some("iris".into()),
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(runs.runs.len(), 1, "{runs:#?}");
    demo.stop().await;
}
