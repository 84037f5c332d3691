//! The broker lets in only certificates from the hub's CA, and lets each device touch only
//! its own topics: on the embedded broker and on Mosquitto set up by
//! `flotilla-hub broker-config mosquitto`. Real TLS, real brokers, raw MQTT clients.

use flotilla_api::http::Method;
use flotilla_proto::control::topics;
use serde_json::json;

use crate::mqtt_peer::{
    Credentials, MqttPeer, device_certificate, foreign_ca, genuine_certificate, hub_ca,
    hub_identity,
};
use crate::support::*;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A Mosquitto broker configured by `flotilla-hub broker-config mosquitto` for `hub`'s CA.
fn secured_mosquitto(hub: &HubProcess) -> Mosquitto {
    let dir = tempfile::tempdir().unwrap();
    let port = flotilla_testkit::free_port();
    let output = std::process::Command::new(flotilla_testkit::workspace_binary("flotilla-hub"))
        .args(["broker-config", "mosquitto", "--data-dir"])
        .arg(hub.data_dir())
        .arg("--out")
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of_failure(&output));
    // Mosquitto started as root runs as the user mosquitto: it must reach the folder and
    // own the key (mode 0600), as an operator would set it up under /etc/mosquitto.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let owned = std::process::Command::new("chown")
        .arg("mosquitto")
        .arg(dir.path().join("server.key"))
        .status()
        .unwrap();
    assert!(owned.success(), "chown mosquitto server.key");
    let config = dir.path().join("mosquitto.conf");
    Mosquitto::run(&config, port, dir)
}

/// A hub using `mosquitto` over TLS (initialised first: the broker's files come from its
/// CA), keeping the broker's revocation list up to date as `broker-config` suggests.
fn hub_with_mosquitto() -> (HubProcess, Mosquitto) {
    let mut hub = HubProcess::init("");
    let mosquitto = secured_mosquitto(&hub);
    hub.config = format!(
        "[broker]\nurl = \"mqtts://127.0.0.1:{}\"\ncrl_file = \"{}\"\n",
        mosquitto.port,
        mosquitto.dir().join("crl.pem").display()
    );
    hub.serve();
    (hub, mosquitto)
}

async fn push_scaler(hub: &HubProcess) {
    hub.operator()
        .upload(
            "/api/v1/models/scaler/versions",
            std::fs::read(fixture("scaler_v1.onnx")).unwrap().into(),
        )
        .await
        .unwrap();
}

/// Pushes scaler v1, enrolls an agent with `labels`, deploys to them, and waits until the
/// agent serves it and the hub heard its report.
async fn a_device_follows_a_deployment(hub: &HubProcess, labels: &str) {
    push_scaler(hub).await;
    let agent = AgentRun::start(hub, &enroll_token(hub, labels).await).unwrap();
    deploy_to(hub, labels).await;
    agent.wait_serving("scaler", 1);
    wait_reported(hub, &agent.device_id, |d| {
        d["serving"]["scaler"] == 1 && d["online"] == true
    })
    .await;
}

async fn deploy_to(hub: &HubProcess, selector: &str) {
    hub.operator()
        .json(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"model": "scaler", "version": "1", "selector": selector})),
        )
        .await
        .unwrap();
}

/// What both brokers must enforce. `embedded`: the checks only rmqtt's hooks answer
/// explicitly (refused SUBACKs, closed connections, revocation kicks); Mosquitto drops a
/// refused message silently, which the observer checks for both.
pub async fn devices_are_confined(hub: &HubProcess, embedded: bool) {
    push_scaler(hub).await;
    let (a, a_key) = enrolled_device(hub, "acl=a").await;
    let (b, b_key) = enrolled_device(hub, "acl=b").await;
    deploy_to(hub, "acl=a").await;
    deploy_to(hub, "acl=b").await;
    let a_cert = || genuine_certificate(hub, &a, &a_key);

    // Device A, with its certificate: its own desired state, retained.
    let mut device_a = MqttPeer::connect(
        hub,
        &a,
        Credentials::Device {
            chain: a_cert(),
            key: &a_key,
        },
    );
    device_a.connected().await.expect("A connects");
    let mut own = None;
    for _ in 0..20 {
        assert!(device_a.subscribe(&topics::desired(&a)).await);
        own = device_a.message_on(&topics::desired(&a), 2).await;
        if own.is_some() {
            break;
        }
    }
    let own = String::from_utf8(own.expect("A reads its own retained desired state")).unwrap();
    assert!(own.contains(&a), "{own}");

    // Not B's desired state, nor everything.
    for filter in [
        topics::desired(&b),
        "flotilla/v1/#".to_owned(),
        "#".to_owned(),
    ] {
        let granted = device_a.subscribe(&filter).await;
        if embedded {
            assert!(!granted, "the embedded broker refuses {filter}");
        }
        assert_eq!(
            device_a.message_on(&topics::desired(&b), 2).await,
            None,
            "A reads B's desired state through {filter}"
        );
    }

    // An observer with the hub's identity watches B's topics.
    let mut observer = MqttPeer::connect(hub, "flotilla-hub-observer", hub_identity(hub));
    observer
        .connected()
        .await
        .expect("the hub's identity connects");
    assert!(
        observer
            .subscribe(&format!("{}/{b}/#", topics::PREFIX))
            .await
    );
    for topic in [
        topics::reported(&b),
        topics::status(&b),
        topics::desired(&b),
    ] {
        let published = device_a.publish(&topic, true, b"forged".to_vec()).await;
        if embedded {
            assert!(published.is_err(), "the embedded broker closes on {topic}");
            device_a.connected().await.expect("A reconnects");
        }
        let leaked = observer
            .wait(2, |event| match event {
                Ok(rumqttc::Incoming::Publish(p)) if p.payload.as_ref() == b"forged" => Some(()),
                _ => None,
            })
            .await;
        assert!(
            leaked.is_none(),
            "A's publish on {topic} reached B's topics"
        );
    }

    // Strangers get nothing.
    let (other_ca, _other_dir) = foreign_ca();
    let stranger_key = flotilla_common::signing::SigningKey::generate().unwrap();
    let strangers: Vec<(&str, String, Credentials)> = vec![
        ("no certificate", a.clone(), Credentials::NoCertificate),
        (
            "plain text on the TLS port",
            a.clone(),
            Credentials::Plaintext,
        ),
        (
            "a certificate from another CA",
            a.clone(),
            Credentials::Device {
                chain: device_certificate(&other_ca, &a, &a_key, now(), 30),
                key: &a_key,
            },
        ),
        (
            "an expired certificate",
            a.clone(),
            Credentials::Device {
                chain: device_certificate(&hub_ca(hub), &a, &a_key, now() - 10 * 86_400, 1),
                key: &a_key,
            },
        ),
    ];
    for (what, client_id, credentials) in strangers {
        let mut peer = MqttPeer::connect(hub, &client_id, credentials);
        let outcome = peer.connected().await;
        assert!(outcome.is_err(), "{what}: {outcome:?}");
    }
    if embedded {
        for (what, client_id, chain, key) in [
            ("A's certificate as B", b.clone(), a_cert(), &a_key),
            (
                "a device the hub never enrolled",
                "dev-0123456789abcdef".to_owned(),
                device_certificate(
                    &hub_ca(hub),
                    "dev-0123456789abcdef",
                    &stranger_key,
                    now(),
                    30,
                ),
                &stranger_key,
            ),
        ] {
            let mut peer = MqttPeer::connect(hub, &client_id, Credentials::Device { chain, key });
            let outcome = peer.connected().await;
            assert!(outcome.is_err(), "{what}: {outcome:?}");
        }
    }

    // A stays connected through all of it.
    device_a
        .publish(&topics::reported(&a), false, b"{}".to_vec())
        .await
        .expect("A still publishes on its own topics");

    if embedded {
        // Revoked: dropped within seconds, and not let back in.
        let mut device_b = MqttPeer::connect(
            hub,
            &b,
            Credentials::Device {
                chain: genuine_certificate(hub, &b, &b_key),
                key: &b_key,
            },
        );
        device_b.connected().await.expect("B connects");
        let revoked = hub.cli(Some(&hub.operator_token), &["device", "revoke", &b]);
        assert!(revoked.status.success(), "{}", stderr_of_failure(&revoked));
        let dropped = device_b.dropped(5).await;
        assert!(dropped.is_some(), "a revoked device is dropped");
        let again = device_b.connected().await;
        assert!(again.is_err(), "a revoked device reconnects: {again:?}");
        let log = hub.log();
        for reason in [
            // Refused in the TLS handshake, logged by the broker with the address.
            "TLS accept error: peer sent no certificates",
            "TLS accept error: invalid peer certificate: certificate expired",
            "TLS accept error: invalid peer certificate: BadSignature",
            // Refused by the hub's connect hook, logged with the client id and the reason.
            "with the certificate of",
            "is not enrolled",
            "is revoked",
            "MQTT publish refused",
            "MQTT subscription refused",
            "broker connection dropped",
        ] {
            assert!(log.contains(reason), "the hub logs {reason:?}:\n{log}");
        }
    }
    // The hub kept serving everyone else.
    hub.reader()
        .json(Method::GET, "/api/v1/devices", None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_broker_confines_each_device_to_its_own_topics() {
    let hub = HubProcess::start();
    devices_are_confined(&hub, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_from_broker_config_confines_each_device_to_its_own_topics() {
    let (hub, mosquitto) = hub_with_mosquitto();
    devices_are_confined(&hub, false).await;
    let log = std::fs::read_to_string(&mosquitto.log).unwrap();
    // Mosquitto logs the refused handshakes; refused publishes and subscriptions it drops
    // without a word at its default log level (the observer above saw none arrive).
    for refusal in [
        "peer did not return a certificate",
        "certificate verify failed",
    ] {
        assert!(log.contains(refusal), "{refusal}:\n{log}");
    }
}

/// Mosquitto learns of a revocation from the hub's revocation list: once restarted it
/// refuses the revoked device's genuine certificate in the handshake and still lets the
/// others in.
#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_refuses_a_revoked_device_by_the_hubs_revocation_list() {
    let (hub, mut mosquitto) = hub_with_mosquitto();
    let (a, a_key, a_certificate) = enrolled_device_with_certificate(&hub, "crl=a").await;
    let (b, b_key, b_certificate) = enrolled_device_with_certificate(&hub, "crl=b").await;
    let connect = |id: &str, chain: &str, key| {
        MqttPeer::connect(
            &hub,
            id,
            Credentials::Device {
                chain: chain.to_owned(),
                key,
            },
        )
    };
    let crl = mosquitto.dir().join("crl.pem");
    let before = std::fs::read_to_string(&crl).unwrap();
    assert!(before.starts_with("-----BEGIN X509 CRL-----"), "{before}");
    connect(&a, &a_certificate, &a_key)
        .connected()
        .await
        .expect("A connects before it is revoked");

    let revoked = hub.cli(Some(&hub.operator_token), &["device", "revoke", &a]);
    assert!(revoked.status.success(), "{}", stderr_of_failure(&revoked));
    let after = std::fs::read_to_string(&crl).unwrap();
    assert_ne!(before, after, "the hub rewrote the list at the revocation");
    assert!(
        hub.log().contains("certificate revocation list written"),
        "{}",
        hub.log()
    );
    mosquitto.restart();

    let refused = connect(&a, &a_certificate, &a_key).connected().await;
    assert!(refused.is_err(), "revoked A connects: {refused:?}");
    connect(&b, &b_certificate, &b_key)
        .connected()
        .await
        .expect("B still connects");
    // Refused in the handshake (Mosquitto does not say why; before the restart it had
    // refused nobody).
    let log = std::fs::read_to_string(&mosquitto.log).unwrap();
    let (before_restart, after_restart) = log.rsplit_once("starting").unwrap();
    assert!(
        !before_restart.contains("certificate verify failed"),
        "{log}"
    );
    assert!(after_restart.contains("certificate verify failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_deploy_through_mosquitto_over_tls() {
    let (hub, _mosquitto) = hub_with_mosquitto();
    a_device_follows_a_deployment(&hub, "broker=mosquitto").await;
}

/// With `[tls] enabled = false` (loopback trials) the embedded broker speaks plain MQTT and
/// the whole device flow still works.
#[tokio::test(flavor = "multi_thread")]
async fn plain_mqtt_on_loopback_carries_the_device_flow() {
    let hub = HubProcess::start_with("[tls]\nenabled = false\n");
    a_device_follows_a_deployment(&hub, "plain=yes").await;
}
