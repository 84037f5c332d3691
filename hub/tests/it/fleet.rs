//! End to end with real processes on loopback: a hub with its embedded broker and several
//! agents. Push, deploy, every agent serves the new version through its inference socket;
//! rollback; a tampered artifact is refused and the old version keeps serving; kill -9.

use std::time::Duration;

use flotilla_api::http::Method;
use serde_json::json;

use crate::mqtt_peer::{Credentials, MqttPeer, genuine_certificate, hub_identity};
use crate::support::*;

pub(crate) async fn push(hub: &HubProcess, fixture_name: &str) -> serde_json::Value {
    hub.operator()
        .upload(
            "/api/v1/models/scaler/versions",
            std::fs::read(fixture(fixture_name)).unwrap().into(),
        )
        .await
        .unwrap()
}

pub(crate) async fn deploy(hub: &HubProcess, version: &str, selector: &str) -> serde_json::Value {
    hub.operator()
        .json(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"model": "scaler", "version": version, "selector": selector})),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_deploy_upgrade_rollback_and_survive_kill_9() {
    let mut hub = HubProcess::start();
    push(&hub, "scaler_v1.onnx").await;
    push(&hub, "scaler_v2.onnx").await;
    let mut agents = Vec::new();
    for labels in ["region=eu", "region=eu", "region=us"] {
        let token = enroll_token(&hub, labels).await;
        agents.push(AgentRun::start(&hub, &token).unwrap());
    }

    // Everyone gets version 1, over QUIC.
    let answer = deploy(&hub, "1", "").await;
    assert_eq!(answer["devices"].as_array().unwrap().len(), 3);
    for agent in &agents {
        agent.wait_serving("scaler", 1);
        assert!(
            agent.log().contains("downloaded over QUIC"),
            "{}",
            agent.log()
        );
        assert_eq!(agent.scale("scaler", 3.0).unwrap(), (1, 3.0));
        wait_reported(&hub, &agent.device_id, |d| d["serving"]["scaler"] == 1).await;
    }

    // Only region=eu moves to version 2.
    deploy(&hub, "2", "region=eu").await;
    agents[0].wait_serving("scaler", 2);
    agents[1].wait_serving("scaler", 2);
    assert_eq!(agents[0].scale("scaler", 3.0).unwrap(), (2, 6.0));
    assert_eq!(
        agents[2].scale("scaler", 3.0).unwrap(),
        (1, 3.0),
        "region=us untouched"
    );
    let log = agents[0].log();
    assert!(
        log.contains("form=patch-from-") || log.contains("form=zstd"),
        "compressed transfer: {log}"
    );
    let reported = wait_reported(&hub, &agents[0].device_id, |d| d["serving"]["scaler"] == 2).await;
    assert_eq!(reported["last_outcomes"][0]["state"], "installed");
    assert_eq!(reported["labels"]["region"], "eu");

    // Rollback to 1: the kept previous version, named as a rollback by the signed desired state.
    deploy(&hub, "1", "region=eu").await;
    agents[0].wait_serving("scaler", 1);
    agents[1].wait_serving("scaler", 1);

    // kill -9, hub gone too: the agent restarts serving its last good version by itself.
    hub.stop();
    agents[0].kill_9();
    agents[0].restart().unwrap();
    assert_eq!(agents[0].scale("scaler", 2.0).unwrap(), (1, 2.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_rollback_any_live_version_can_be_deployed() {
    let hub = HubProcess::start();
    push(&hub, "scaler_v1.onnx").await;
    push(&hub, "scaler_v2.onnx").await;
    for doc in ["scaler, third push", "scaler, fourth push"] {
        hub.operator()
            .upload(
                "/api/v1/models/scaler/versions",
                fixture_with_doc_string("scaler_v1.onnx", doc).into(),
            )
            .await
            .unwrap();
    }
    let agent = AgentRun::start(&hub, &enroll_token(&hub, "").await).unwrap();
    // 4, back to 1, then forward to 3: still older than the 4 the device trusts, and taken
    // because the hub marks it a rollback.
    for version in [4, 1, 3] {
        deploy(&hub, &version.to_string(), "").await;
        agent.wait_serving("scaler", version);
        wait_reported(&hub, &agent.device_id, |d| {
            d["serving"]["scaler"] == version && d["last_outcomes"][0]["state"] == "installed"
        })
        .await;
    }
    // A retired version stays out of reach.
    hub.operator()
        .json(
            Method::POST,
            "/api/v1/models/scaler/versions/2/retire",
            None,
        )
        .await
        .unwrap();
    let refused = hub
        .operator()
        .json(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"model": "scaler", "version": "2", "selector": ""})),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(flotilla_api::ClientError::Api { status: 409, .. })
        ),
        "{refused:?}"
    );
    assert_eq!(agent.scale("scaler", 3.0).unwrap(), (3, 3.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_artifact_is_refused_and_the_running_version_keeps_serving() {
    let hub = HubProcess::start();
    push(&hub, "scaler_v1.onnx").await;
    let v2 = push(&hub, "scaler_v2.onnx").await;
    let token = enroll_token(&hub, "site=lab").await;
    let agent = AgentRun::start(&hub, &token).unwrap();
    deploy(&hub, "1", "").await;
    agent.wait_serving("scaler", 1);

    // Flip one byte of version 2 on the hub's disk, in every form the hub keeps (raw, zstd,
    // patch), as a disk error or an intruder on the hub would.
    let sha = v2["sha256"].as_str().unwrap();
    let folder = hub.data_dir().join("artifacts/sha256").join(&sha[..2]);
    let mut tampered = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap().starts_with(sha) {
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
            tampered += 1;
        }
    }
    assert!(tampered >= 2, "raw and zstd forms exist");

    deploy(&hub, "2", "").await;
    let reported = wait_reported(&hub, &agent.device_id, |d| {
        d["last_outcomes"][0]["state"] == "failed"
    })
    .await;
    let outcome = &reported["last_outcomes"][0];
    assert_eq!(outcome["step"], "check_artifact");
    assert!(
        outcome["reason"]
            .as_str()
            .unwrap()
            .contains("does not match its signed manifest"),
        "{outcome}"
    );
    assert_eq!(reported["serving"]["scaler"], 1);
    assert_eq!(
        agent.scale("scaler", 5.0).unwrap(),
        (1, 5.0),
        "the old version keeps serving"
    );
    let versions = std::fs::read_dir(agent.dir.path().join("state/models/scaler"))
        .unwrap()
        .count();
    assert_eq!(
        versions, 1,
        "nothing unverified was written where models are loaded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn enrollment_tokens_work_once() {
    let hub = HubProcess::start();
    let token = enroll_token(&hub, "").await;
    let _first = AgentRun::start(&hub, &token).unwrap();
    let refused = AgentRun::start(&hub, &token).unwrap_err();
    assert!(
        refused.contains("enrollment refused (403)") && refused.contains("already used"),
        "{refused}"
    );
    // A token of this hub's CA that the hub never made: refused by the hub.
    let pin = token.rsplit_once('.').unwrap().1;
    let refused = AgentRun::start(&hub, &format!("flo_enroll_forged.{pin}")).unwrap_err();
    assert!(refused.contains("enrollment refused (401)"), "{refused}");
    // A token pinning another CA, or none: the agent refuses the hub before it sends a thing.
    for token in [
        format!("{}.{}", token.rsplit_once('.').unwrap().0, "ab".repeat(32)),
        "flo_enroll_x".to_owned(),
    ] {
        let refused = AgentRun::start(&hub, &token).unwrap_err();
        assert!(
            refused.contains("is not the hub this device trusts"),
            "{refused}"
        );
    }
}

/// A report signed by another device's key (or by no enrolled key) on a device's topic is
/// refused: a broker without ACLs cannot let one device speak for another.
#[tokio::test(flavor = "multi_thread")]
async fn reports_signed_by_another_device_are_refused() {
    use flotilla_common::signing::{SigningKey, sign_envelope};
    use flotilla_proto::control::{REPORTED_PAYLOAD_TYPE, ReportedState, topics};

    let hub = HubProcess::start();
    push(&hub, "scaler_v1.onnx").await;
    let victim = AgentRun::start(&hub, &enroll_token(&hub, "role=victim").await).unwrap();
    let attacker = AgentRun::start(&hub, &enroll_token(&hub, "role=attacker").await).unwrap();
    deploy(&hub, "1", "role=victim").await;
    victim.wait_serving("scaler", 1);
    wait_reported(&hub, &victim.device_id, |d| d["serving"]["scaler"] == 1).await;

    let attacker_key = SigningKey::from_hex(
        &std::fs::read_to_string(attacker.dir.path().join("state/device.key")).unwrap(),
    )
    .unwrap();
    let forged = ReportedState {
        device_id: victim.device_id.clone(),
        desired_sequence: 99,
        at: 0,
        agent_version: "forged".into(),
        serving: [("scaler".to_owned(), 42)].into(),
        outcomes: vec![],
    };
    let envelope = sign_envelope(
        REPORTED_PAYLOAD_TYPE,
        serde_json::to_string(&forged).unwrap(),
        &[&attacker_key],
    );
    // With the victim's certificate (stolen, or a broker without ACLs): the broker lets the
    // publishes through, and the hub's signature check is what refuses them.
    let victim_key = SigningKey::from_hex(
        &std::fs::read_to_string(victim.dir.path().join("state/device.key")).unwrap(),
    )
    .unwrap();
    let mut intruder = MqttPeer::connect(
        &hub,
        &victim.device_id,
        Credentials::Device {
            chain: genuine_certificate(&hub, &victim.device_id, &victim_key),
            key: &victim_key,
        },
    );
    intruder.connected().await.unwrap();
    intruder
        .publish(
            &topics::reported(&victim.device_id),
            false,
            serde_json::to_vec(&envelope).unwrap(),
        )
        .await
        .unwrap();
    let unsigned = serde_json::to_vec(&sign_envelope(
        REPORTED_PAYLOAD_TYPE,
        serde_json::to_string(&forged).unwrap(),
        &[],
    ))
    .unwrap();
    intruder
        .publish(&topics::reported(&victim.device_id), false, unsigned)
        .await
        .unwrap();
    for _ in 0..200 {
        if hub.log().matches("device message rejected").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        hub.log().matches("device message rejected").count() >= 2,
        "{}",
        hub.log()
    );
    let after = device(&hub, &victim.device_id).await;
    assert_eq!(
        after["serving"]["scaler"], 1,
        "the forged report changed nothing"
    );
    assert_ne!(after["agent_version"], "forged");
    let client = hub.anonymous();
    let (_, metrics) = client
        .request(Method::GET, "/metrics", "text/plain", Default::default())
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    let rejected: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("flotilla_hub_device_messages_rejected_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rejected >= 2, "{metrics}");
    assert!(
        metrics.contains("flotilla_hub_enrollments_total 2"),
        "{metrics}"
    );
}

/// A version the hub accepted but the device cannot run: the smoke test catches it, the
/// install fails at that step with ONNX Runtime's reason, and the running version stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_model_the_device_cannot_run_fails_its_smoke_test_and_changes_nothing() {
    let hub = HubProcess::start();
    push(&hub, "scaler_v1.onnx").await;
    push(&hub, "needs_three.onnx").await;
    let agent = AgentRun::start(&hub, &enroll_token(&hub, "").await).unwrap();
    deploy(&hub, "1", "").await;
    agent.wait_serving("scaler", 1);
    deploy(&hub, "2", "").await;
    let reported = wait_reported(&hub, &agent.device_id, |d| {
        d["last_outcomes"][0]["state"] == "failed"
    })
    .await;
    let outcome = &reported["last_outcomes"][0];
    assert_eq!(
        (outcome["version"].as_u64(), outcome["step"].as_str()),
        (Some(2), Some("smoke_test")),
        "{outcome}"
    );
    assert!(
        outcome["reason"]
            .as_str()
            .unwrap()
            .contains("ONNX Runtime could not run"),
        "{outcome}"
    );
    assert_eq!(agent.scale("scaler", 4.0).unwrap(), (1, 4.0));
    assert!(
        !agent.dir.path().join("state/models/scaler/2").exists(),
        "the failed version is not left to be served"
    );
}

/// kill -9 at many instants of installs: after every restart the agent serves its last good
/// version at once, and it converges to the desired version.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_any_instant_of_an_install_recovers() {
    let hub = HubProcess::start();
    push(&hub, "scaler_v1.onnx").await;
    push(&hub, "scaler_v2.onnx").await;
    let mut agent = AgentRun::start(&hub, &enroll_token(&hub, "").await).unwrap();
    deploy(&hub, "1", "").await;
    agent.wait_serving("scaler", 1);
    for (round, delay_ms) in [0u64, 1, 3, 6, 10, 15, 25, 40].into_iter().enumerate() {
        let target = if round % 2 == 0 { 2 } else { 1 };
        deploy(&hub, &target.to_string(), "").await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        agent.kill_9();
        agent.restart().unwrap();
        let (version, y) = agent.scale("scaler", 1.0).unwrap_or_else(|e| {
            panic!(
                "round {round}: nothing served after restart: {e}\n{}",
                agent.log()
            )
        });
        assert_eq!(
            y, version as f64,
            "round {round}: version {version} answers as itself"
        );
        agent.wait_serving("scaler", target);
    }
}

/// A hub with scaler versions 1 and 2, and an agent enrolled with `labels` serving
/// version 1, reported.
pub(crate) async fn an_agent_serving_version_1_of_two(labels: &str) -> (HubProcess, AgentRun) {
    let hub = HubProcess::start();
    push(&hub, "scaler_v1.onnx").await;
    push(&hub, "scaler_v2.onnx").await;
    let agent = AgentRun::start(&hub, &enroll_token(&hub, labels).await).unwrap();
    deploy(&hub, "1", "").await;
    agent.wait_serving("scaler", 1);
    wait_reported(&hub, &agent.device_id, |d| d["serving"]["scaler"] == 1).await;
    (hub, agent)
}

/// The hub restarts right after a deployment: its embedded broker forgot the retained
/// message, so the hub republishes every desired state when it reconnects, and the agent
/// (which kept serving throughout) converges.
#[tokio::test(flavor = "multi_thread")]
async fn a_hub_restart_mid_deployment_converges() {
    let (mut hub, agent) = an_agent_serving_version_1_of_two("").await;
    hub.stop();
    assert_eq!(
        agent.scale("scaler", 2.0).unwrap(),
        (1, 2.0),
        "serving while the hub is down"
    );
    hub.serve();
    deploy(&hub, "2", "").await;
    hub.stop();
    hub.serve();
    agent.wait_serving("scaler", 2);
    wait_reported(&hub, &agent.device_id, |d| d["serving"]["scaler"] == 2).await;
}

/// UDP blocked (the advertised QUIC address answers nothing): agents fall back to HTTP
/// range downloads and install all the same.
#[tokio::test(flavor = "multi_thread")]
async fn with_udp_blocked_downloads_fall_back_to_http_ranges() {
    let nowhere = format!("127.0.0.1:{}", free_udp_port());
    let hub = HubProcess::start_with(&format!("[quic]\nadvertise = \"{nowhere}\"\n"));
    push(&hub, "scaler_v1.onnx").await;
    let agent = AgentRun::start(&hub, &enroll_token(&hub, "").await).unwrap();
    deploy(&hub, "1", "").await;
    agent.wait_serving("scaler", 1);
    let log = agent.log();
    assert!(
        log.contains("falling back to HTTP ranges") && log.contains("downloaded over HTTP"),
        "{log}"
    );
}

/// Rotating the signing key: root metadata N+1 names the new key; agents that meet a document
/// signed by it fetch the next root, check it against the one they trust, and carry on. With
/// the root key exported (kept offline), the online rotation is refused and the offline one
/// works.
/// A desired state signed with the hub's signing key by someone else (the key leaked),
/// published straight to the broker.
async fn forge_desired(
    hub: &HubProcess,
    leaked: &flotilla_common::signing::SigningKey,
    device_id: &str,
    root_version: u64,
    sequence: u64,
    version: u64,
) {
    use flotilla_common::signing::sign_envelope;
    use flotilla_proto::control::{DESIRED_PAYLOAD_TYPE, DesiredModel, DesiredState, topics};
    let manifest = hub
        .reader()
        .json(
            Method::GET,
            &format!("/api/v1/models/scaler/versions/{version}/manifest"),
            None,
        )
        .await
        .unwrap();
    let state = DesiredState {
        device_id: device_id.to_owned(),
        root_version,
        sequence,
        issued: 0,
        expires: i64::MAX / 2,
        models: vec![DesiredModel {
            name: "scaler".into(),
            version,
            manifest: serde_json::from_value(manifest).unwrap(),
            rollback: true,
        }],
    };
    let envelope = sign_envelope(
        DESIRED_PAYLOAD_TYPE,
        serde_json::to_string(&state).unwrap(),
        &[leaked],
    );
    // Publishing a desired state takes the hub's identity on the broker: the thief has
    // that too here, so the device's own checks are what is under test.
    let mut forger = MqttPeer::connect(hub, "flotilla-hub-forger", hub_identity(hub));
    forger.connected().await.unwrap();
    forger
        .publish(
            &topics::desired(device_id),
            true,
            serde_json::to_vec(&envelope).unwrap(),
        )
        .await
        .expect("the broker acknowledges the forgery");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaked_signing_key_and_its_forged_sequence_stop_counting_at_the_rotation() {
    let hub = HubProcess::start();
    push(&hub, "scaler_v1.onnx").await;
    push(&hub, "scaler_v2.onnx").await;
    let agent = AgentRun::start(&hub, &enroll_token(&hub, "").await).unwrap();
    deploy(&hub, "1", "").await;
    agent.wait_serving("scaler", 1);
    wait_reported(&hub, &agent.device_id, |d| d["serving"]["scaler"] == 1).await;

    let leaked = flotilla_common::signing::SigningKey::from_hex(
        std::fs::read_to_string(hub.data_dir().join("keys/signing.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    // Before anyone knows of the leak the forgery is followed (the key is trusted), with a
    // sequence far beyond the hub's; the hub puts the device's report of it on record.
    forge_desired(&hub, &leaked, &agent.device_id, 1, 1_000_000_000_000, 2).await;
    agent.wait_serving("scaler", 2);
    let mut flagged = false;
    for _ in 0..200 {
        let audit = hub
            .reader()
            .json(Method::GET, "/api/v1/audit", None)
            .await
            .unwrap();
        flagged = audit.as_array().unwrap().iter().any(|e| {
            e["action"] == "device.desired_not_signed_here"
                && e["detail"].as_str().unwrap().contains("1000000000000")
        });
        if flagged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        flagged,
        "the hub flags a device following a sequence it never signed"
    );
    assert_eq!(
        device(&hub, &agent.device_id).await["serving"]["scaler"],
        1,
        "the forged report is kept out of the inventory"
    );

    // The operator rotates: the hub's desired state under root 2 outranks the forgery, and
    // the device goes back to what the hub wants.
    hub.operator()
        .json(Method::POST, "/api/v1/keys/rotate", None)
        .await
        .unwrap();
    agent.wait_serving("scaler", 1);
    deploy(&hub, "2", "").await;
    agent.wait_serving("scaler", 2);
    wait_reported(&hub, &agent.device_id, |d| d["serving"]["scaler"] == 2).await;

    // The leaked key is worth nothing now, whatever it claims.
    for root_version in [1, 2] {
        forge_desired(
            &hub,
            &leaked,
            &agent.device_id,
            root_version,
            2_000_000_000_000,
            1,
        )
        .await;
    }
    let mut refused = false;
    for _ in 0..200 {
        if agent.log().matches("desired state refused").count() >= 2 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "{}", agent.log());
    assert_eq!(agent.scale("scaler", 3.0).unwrap(), (2, 6.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_key_rotations_online_and_offline_reach_the_agents() {
    let mut hub = HubProcess::start();
    push(&hub, "scaler_v1.onnx").await;
    push(&hub, "scaler_v2.onnx").await;
    let agent = AgentRun::start(&hub, &enroll_token(&hub, "").await).unwrap();
    deploy(&hub, "1", "").await;
    agent.wait_serving("scaler", 1);

    let rotated = hub
        .operator()
        .json(Method::POST, "/api/v1/keys/rotate", None)
        .await
        .unwrap();
    assert_eq!(rotated["root_version"], 2);
    deploy(&hub, "2", "").await;
    agent.wait_serving("scaler", 2);
    assert!(
        agent
            .log()
            .contains("trusting the hub's rotated root metadata"),
        "{}",
        agent.log()
    );
    match hub
        .reader()
        .json(Method::POST, "/api/v1/keys/rotate", None)
        .await
    {
        Err(flotilla_api::ClientError::Api { status: 403, .. }) => {}
        other => panic!("a read-only token must not rotate keys: {other:?}"),
    }

    // Take the root key offline; the hub can no longer rotate by itself.
    let exported = hub.data_dir().join("root-key-offline");
    let out = std::process::Command::new(flotilla_testkit::workspace_binary("flotilla-hub"))
        .args(["root", "export", "--remove", "--data-dir"])
        .arg(hub.data_dir())
        .arg("--out")
        .arg(&exported)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!hub.data_dir().join("keys/root.key").exists());
    match hub
        .operator()
        .json(Method::POST, "/api/v1/keys/rotate", None)
        .await
    {
        Err(flotilla_api::ClientError::Api {
            status: 409,
            message,
        }) => assert!(message.contains("root rotate"), "{message}"),
        other => panic!("{other:?}"),
    }
    hub.stop();
    let out = std::process::Command::new(flotilla_testkit::workspace_binary("flotilla-hub"))
        .args(["root", "rotate", "--data-dir"])
        .arg(hub.data_dir())
        .arg("--root-key")
        .arg(&exported)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("root metadata version 3"));
    hub.serve();
    deploy(&hub, "1", "").await;
    agent.wait_serving("scaler", 1);
    let root: serde_json::Value = hub
        .reader()
        .json(Method::GET, "/api/v1/root", None)
        .await
        .unwrap();
    assert!(root["payload"].as_str().unwrap().contains("\"version\":3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_token_enrolls_its_count_of_devices_and_a_revoked_token_none() {
    use flotilla_api::devices::EnrollmentTokenRequest;
    let hub = HubProcess::start();
    let request = |uses| EnrollmentTokenRequest {
        labels: [("line".to_owned(), "3".to_owned())].into(),
        ttl_seconds: 600,
        uses,
    };
    let claim = hub
        .operator()
        .create_enrollment_token(&request(2))
        .await
        .unwrap();
    // One image for many devices: each use enrolls a new device with its own key.
    let first = AgentRun::start(&hub, &claim.token).unwrap();
    let second = AgentRun::start(&hub, &claim.token).unwrap();
    assert_ne!(first.device_id, second.device_id);
    assert_eq!(device(&hub, &second.device_id).await["labels"]["line"], "3");
    let refused = AgentRun::start(&hub, &claim.token).unwrap_err();
    assert!(
        refused.contains("enrollment refused (403)") && refused.contains("claim token is spent"),
        "{refused}"
    );

    let fresh = hub
        .operator()
        .create_enrollment_token(&request(5))
        .await
        .unwrap();
    let revoked = hub.cli(
        Some(&hub.operator_token),
        &["enroll-token", "revoke", &fresh.id],
    );
    assert!(revoked.status.success(), "{}", stderr_of_failure(&revoked));
    let refused = AgentRun::start(&hub, &fresh.token).unwrap_err();
    assert!(
        refused.contains("enrollment refused (403)") && refused.contains("revoked"),
        "{refused}"
    );
    let listed = stdout(&hub.cli(Some(&hub.operator_token), &["enroll-token", "list"]));
    let line_of = |id: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} listed: {listed}"))
            .to_owned()
    };
    assert!(line_of(&claim.id).contains("2/2") && line_of(&claim.id).contains("used up"));
    assert!(line_of(&fresh.id).contains("0/5") && line_of(&fresh.id).contains("revoked"));
    assert!(!listed.contains(&claim.token), "secrets are never listed");
    // A read-only token may not see or revoke tokens.
    let read = hub.cli(Some(&hub.read_token), &["enroll-token", "list"]);
    assert!(!read.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_due_for_renewal_is_renewed_and_downloads_use_the_new_one() {
    // One-day certificates are due at once (a third of 90 days is the threshold); with
    // QUIC off every download goes over HTTPS ranges, which want a certificate this hub
    // issued.
    let hub =
        HubProcess::start_with("[tls]\ndevice_certificate_days = 1\n[quic]\nenabled = false\n");
    push(&hub, "scaler_v1.onnx").await;
    let agent = AgentRun::start(&hub, &enroll_token(&hub, "").await).unwrap();
    deploy(&hub, "1", "").await;
    agent.wait_serving("scaler", 1);
    assert!(
        agent.log().contains("device certificate renewed"),
        "{}",
        agent.log()
    );
    let audit = audit_entries(&hub).await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "device.certificate_renewed"
                && e["actor"] == agent.device_id.as_str()),
        "{audit:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_device_downloads_nothing_and_a_removed_one_is_forgotten() {
    // QUIC off: downloads go over HTTPS ranges, which check the device certificate.
    let hub = HubProcess::start_with("[quic]\nenabled = false\n");
    let v1 = push(&hub, "scaler_v1.onnx").await;
    let mut agent = AgentRun::start(&hub, &enroll_token(&hub, "").await).unwrap();
    deploy(&hub, "1", "").await;
    agent.wait_serving("scaler", 1);

    let revoked = hub.cli(
        Some(&hub.operator_token),
        &["device", "revoke", &agent.device_id],
    );
    assert!(revoked.status.success(), "{}", stderr_of_failure(&revoked));
    let listed = stdout(&hub.cli(Some(&hub.read_token), &["device", "list"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&agent.device_id) && l.contains("revoked")),
        "{listed}"
    );
    // The broker dropped it and refuses it from now on.
    let mut refused = false;
    for _ in 0..200 {
        if agent.log().contains("NotAuthorized") {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the broker refuses it: {}", agent.log());
    assert_eq!(
        agent.scale("scaler", 3.0).unwrap(),
        (1, 3.0),
        "it keeps serving"
    );
    // Its certificate downloads nothing (read from its store once it is stopped).
    agent.kill_9();
    let state = rusqlite::Connection::open(agent.dir.path().join("state/agent.db")).unwrap();
    state.busy_timeout(Duration::from_secs(10)).unwrap();
    let enrollment: String = state
        .query_row(
            "SELECT value FROM state WHERE key = 'enrollment'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let enrollment: serde_json::Value = serde_json::from_str(&enrollment).unwrap();
    let key = flotilla_common::signing::SigningKey::from_hex(
        &std::fs::read_to_string(agent.dir.path().join("state/device.key")).unwrap(),
    )
    .unwrap();
    let identity = flotilla_api::tls::ClientIdentity::ed25519(
        enrollment["certificate"].as_str().unwrap(),
        &key.seed(),
    )
    .unwrap();
    let trust = flotilla_api::tls::ServerTrust::ca_pem(
        &std::fs::read_to_string(hub.ca_file()).unwrap(),
        "ca.crt",
    )
    .unwrap();
    let tls = flotilla_api::tls::client_config(&trust, Some(&identity)).unwrap();
    let sha256 = v1["sha256"].as_str().unwrap();
    let answer = flotilla_api::http::HttpClient::new(&hub.url)
        .unwrap()
        .with_tls(tls)
        .call(
            Method::GET,
            &format!("/api/v1/artifacts/{sha256}"),
            &[],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status.as_u16(), 403, "{}", answer.error_message());
    assert!(answer.error_message().contains("was revoked"));
    let audit = audit_entries(&hub).await;
    assert!(
        audit.iter().any(|e| e["action"] == "device.revoke"),
        "{audit:#?}"
    );

    let removed = hub.cli(
        Some(&hub.operator_token),
        &["device", "remove", &agent.device_id],
    );
    assert!(removed.status.success(), "{}", stderr_of_failure(&removed));
    match hub
        .reader()
        .json(
            Method::GET,
            &format!("/api/v1/devices/{}", agent.device_id),
            None,
        )
        .await
    {
        Err(flotilla_api::ClientError::Api { status: 404, .. }) => {}
        other => panic!("a removed device is forgotten: {other:?}"),
    }
}
