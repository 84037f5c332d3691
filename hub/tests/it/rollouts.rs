//! Rollouts against a real hub process and real agents: bad specs and commands refused with
//! their reasons, a rollout waiting for approval and later paused survives hub restarts in
//! the same state, promotion moves the alias, and a rollback after completion brings every
//! device back to its previous version. (Gated waves under traffic, and the automatic
//! rollback of a broken version, run in fleet-sim/tests/rollouts.rs.)

use std::time::Duration;

use flotilla_api::http::Method;
use serde_json::json;

use crate::support::*;

async fn push(hub: &HubProcess, fixture_name: &str) {
    hub.operator()
        .upload(
            "/api/v1/models/scaler/versions",
            std::fs::read(fixture(fixture_name)).unwrap().into(),
        )
        .await
        .unwrap();
}

async fn rollout(hub: &HubProcess, id: &str) -> serde_json::Value {
    hub.reader()
        .json(Method::GET, &format!("/api/v1/rollouts/{id}"), None)
        .await
        .unwrap()
}

async fn wait_phase(hub: &HubProcess, id: &str, phase: &str) -> serde_json::Value {
    for _ in 0..400 {
        let view = rollout(hub, id).await;
        if view["phase"] == phase {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "rollout {id} never reached {phase}: {}",
        rollout(hub, id).await
    );
}

/// The refusal's status and message.
async fn refused(
    client: &flotilla_api::AdminClient,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> String {
    match client.json(method, path, body).await {
        Ok(answer) => panic!("{path} should have been refused: {answer}"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rollouts_refuse_bad_input_survive_restarts_promote_and_roll_back() {
    let mut hub = HubProcess::start_with("[rollouts]\ntick_seconds = 1\n");
    push(&hub, "scaler_v1.onnx").await;
    push(&hub, "scaler_v2.onnx").await;
    let mut agents = Vec::new();
    for _ in 0..2 {
        let token = enroll_token(&hub, "region=eu").await;
        agents.push(AgentRun::start(&hub, &token).unwrap());
    }
    hub.operator()
        .json(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"model": "scaler", "version": "1", "selector": ""})),
        )
        .await
        .unwrap();
    for agent in &agents {
        agent.wait_serving("scaler", 1);
    }

    // Bad specs, each refused with its reason.
    let op = hub.operator();
    let create = |spec: serde_json::Value| {
        let op = op.clone();
        async move { refused(&op, Method::POST, "/api/v1/rollouts", Some(spec)).await }
    };
    let base = json!({"model": "scaler", "version": "2"});
    let with = |extra: serde_json::Value| {
        let mut spec = base.clone();
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    };
    let e = create(with(json!({"colour": "red"}))).await;
    assert!(e.contains("400") && e.contains("unknown field"), "{e}");
    let e = create(with(json!({"waves": [50, 10, 100]}))).await;
    assert!(e.contains("do not increase"), "{e}");
    let e = create(with(json!({"waves": [50, 150]}))).await;
    assert!(e.contains("at most 100"), "{e}");
    let e = create(with(json!({"selector": "region=mars"}))).await;
    assert!(
        e.contains("400") && e.contains("no enrolled device matches"),
        "{e}"
    );
    let e = create(with(json!({"version": "9"}))).await;
    assert!(e.contains("404"), "{e}");
    let e = refused(
        &hub.reader(),
        Method::POST,
        "/api/v1/rollouts",
        Some(base.clone()),
    )
    .await;
    assert!(
        e.contains("403"),
        "a read-only token cannot start rollouts: {e}"
    );

    // Through the CLI: waves of 50% and 100%, the first waits for approval.
    let token = hub.operator_token.clone();
    let out = stdout(&hub.cli(
        Some(&token),
        &[
            "rollout",
            "create",
            "--model",
            "scaler",
            "--version",
            "2",
            "--waves",
            "50,100",
            "--approve-before",
            "1",
            "--json",
        ],
    ));
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["phase"], "waiting_for_approval", "{created}");
    assert_eq!(created["wave_sizes"], json!([1, 2]));
    let e = create(base.clone()).await;
    assert!(
        e.contains("409") && e.contains(&id),
        "one rollout per model: {e}"
    );
    let e = refused(
        &hub.reader(),
        Method::POST,
        &format!("/api/v1/rollouts/{id}/approve"),
        None,
    )
    .await;
    assert!(e.contains("403"), "{e}");

    // The hub restarts: the rollout still waits; approval starts wave 1 on one device.
    hub.stop();
    hub.serve();
    assert_eq!(rollout(&hub, &id).await["phase"], "waiting_for_approval");
    stdout(&hub.cli(Some(&token), &["rollout", "approve", &id]));
    let view = wait_phase(&hub, &id, "running").await;
    assert_eq!(
        (view["wave"].as_u64(), view["told"].as_u64()),
        (Some(1), Some(1))
    );
    let canary = loop {
        let view = rollout(&hub, &id).await;
        if view["installed"] == 1 {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(canary["installed"], 1);

    // Paused, then the hub restarts again: still paused, nothing more told.
    stdout(&hub.cli(Some(&token), &["rollout", "pause", &id]));
    hub.stop();
    hub.serve();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = rollout(&hub, &id).await;
    assert_eq!(
        (view["phase"].as_str(), view["told"].as_u64()),
        (Some("paused"), Some(1))
    );
    let failure = stderr_of_failure(&hub.cli(Some(&token), &["rollout", "approve", &id]));
    assert!(
        failure.contains("cannot approve: the rollout is paused"),
        "{failure}"
    );

    // Resume, then promote: every device gets version 2 and `production` points at it.
    stdout(&hub.cli(Some(&token), &["rollout", "resume", &id]));
    let status = stdout(&hub.cli(Some(&token), &["rollout", "promote", &id]));
    assert!(status.contains("completed"), "{status}");
    for agent in &agents {
        agent.wait_serving("scaler", 2);
    }
    let model = op
        .json(Method::GET, "/api/v1/models/scaler", None)
        .await
        .unwrap();
    assert_eq!(model["aliases"]["production"], 2, "{model}");

    // Rolled back after completion: everyone returns to version 1.
    stdout(&hub.cli(Some(&token), &["rollout", "rollback", &id]));
    for agent in &agents {
        agent.wait_serving("scaler", 1);
    }
    let view = wait_phase(&hub, &id, "rolled_back").await;
    assert_eq!(view["restored"], 2, "{view}");

    // Every transition is an event with its reason.
    let events = op
        .json(Method::GET, "/api/v1/events?model=scaler", None)
        .await
        .unwrap();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in [
        "rollout.created",
        "rollout.waiting_for_approval",
        "rollout.approved",
        "rollout.paused",
        "rollout.resumed",
        "rollout.alias_moved",
        "rollout.completed",
        "rollout.rolling_back",
        "rollout.rolled_back",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let list = stdout(&hub.cli(Some(&token), &["rollout", "list"]));
    assert!(list.contains(&id) && list.contains("rolled_back"), "{list}");

    // A retired version cannot be rolled out.
    stdout(&hub.cli(Some(&token), &["model", "retire", "scaler", "2"]));
    let e = create(base.clone()).await;
    assert!(e.contains("409") && e.contains("retired"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quality_gate_rejects_worse_candidates_and_rolls_out_better_ones() {
    let hub = HubProcess::start_with("[rollouts]\ntick_seconds = 1\n");
    let token = hub.operator_token.clone();
    let cli = |args: &[&str]| hub.cli(Some(&token), args);
    let iris = |name: &str| fixture(name).to_string_lossy().into_owned();
    stdout(&cli(&[
        "model",
        "push",
        "iris",
        &iris("iris_classifier.onnx"),
        "--metric",
        "auc=0.90",
        "--metric",
        "latency_ms=2.0",
    ]));
    stdout(&cli(&["model", "alias", "set", "iris", "production", "1"]));
    let agent_token = enroll_token(&hub, "site=lab").await;
    let _agent = AgentRun::start(&hub, &agent_token).unwrap();
    stdout(&cli(&["deploy", "iris", "1", "--to", "site=lab"]));

    // Bad policies are refused with the reason.
    let failure = stderr_of_failure(&cli(&[
        "model",
        "quality-gate",
        "set",
        "iris",
        "--rule",
        "auc => 1",
    ]));
    assert!(failure.contains("not one of"), "{failure}");
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("canary.toml");
    std::fs::write(&spec, "waves = [100]\nsoak_seconds = 60\n").unwrap();
    stdout(&cli(&[
        "model",
        "quality-gate",
        "set",
        "iris",
        "--rule",
        "auc >= production.auc + 0.005",
        "--rule",
        "latency_ms <= production.latency_ms * 1.1",
        "--auto-rollout",
        &spec.to_string_lossy(),
    ]));

    // Worse than production: rejected (retired), with the comparison shown.
    let rejected = stdout(&cli(&[
        "model",
        "push",
        "iris",
        &iris("iris_classifier_v2.onnx"),
        "--metric",
        "auc=0.903",
        "--metric",
        "latency_ms=2.0",
    ]));
    assert!(rejected.contains("REJECTED"), "{rejected}");
    assert!(
        rejected.contains("FAIL auc >= production.auc + 0.005: candidate 0.903, threshold 0.905"),
        "{rejected}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&stdout(&cli(&["model", "show", "iris", "2", "--json"]))).unwrap();
    assert!(
        shown["retired"].is_number(),
        "a rejected version is retired: {shown}"
    );
    let e = refused(
        &hub.operator(),
        Method::POST,
        "/api/v1/rollouts",
        Some(json!({"model": "iris", "version": "2"})),
    )
    .await;
    assert!(e.contains("retired"), "{e}");

    // Better: passes, and its canary rollout starts by itself.
    let passed = stdout(&cli(&[
        "model",
        "push",
        "iris",
        &iris("iris_classifier_broken.onnx"),
        "--metric",
        "auc=0.93",
        "--metric",
        "latency_ms=2.1",
    ]));
    assert!(passed.contains("quality gate: passed"), "{passed}");
    let id = passed
        .split("canary rollout started: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no rollout started: {passed}"))
        .to_owned();
    let view = rollout(&hub, &id).await;
    assert_eq!(
        (view["version"].as_u64(), view["targets"].as_u64()),
        (Some(3), Some(1))
    );
    let events = hub
        .reader()
        .json(Method::GET, "/api/v1/events?model=iris", None)
        .await
        .unwrap();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"quality_gate.rejected") && kinds.contains(&"quality_gate.passed"),
        "{kinds:?}"
    );
}
