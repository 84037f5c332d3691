//! What an adversarial pass over the hub found, each kept fixed by a test: stolen or
//! stretched enrollment tokens, replayed status, framework error bodies, leftovers of a
//! killed upload. The hub answers each with a clear refusal and keeps serving.

use std::collections::BTreeMap;

use flotilla_api::ClientError;
use flotilla_api::http::Method;
use flotilla_common::signing::{SigningKey, prove_enrollment};
use flotilla_proto::control::EnrollRequest;
use serde_json::json;

use crate::mqtt_peer::{Credentials, MqttPeer, genuine_certificate};
use crate::support::*;

async fn labels_of(hub: &HubProcess, device_id: &str) -> serde_json::Value {
    hub.reader()
        .json(Method::GET, &format!("/api/v1/devices/{device_id}"), None)
        .await
        .unwrap()["labels"]
        .clone()
}

async fn enroll(
    hub: &HubProcess,
    request: &EnrollRequest,
) -> Result<serde_json::Value, ClientError> {
    anonymous_client(hub)
        .json(
            Method::POST,
            "/api/v1/enroll",
            Some(serde_json::to_value(request).unwrap()),
        )
        .await
}

#[tokio::test]
async fn re_enrolling_a_device_needs_its_private_key() {
    let hub = HubProcess::start();
    let (device_id, key) = enrolled_device(&hub, "site=lab").await;
    // A stranger holds a fresh token and the device's public key (public by design: it is in
    // the inventory), and tries to move the device to other labels and hardware.
    let mut forged = EnrollRequest {
        token: enroll_token(&hub, "site=attacker").await,
        public_key: key.public_key(),
        hardware: BTreeMap::from([("accelerator".to_owned(), "none".to_owned())]),
        agent_version: "9.9.9".into(),
        proof: String::new(),
    };
    let unsigned = enroll(&hub, &forged).await;
    assert!(
        matches!(&unsigned, Err(ClientError::Api { status: 401, message }) if message.contains("prove it holds the private key")),
        "{unsigned:?}"
    );
    prove_enrollment(&mut forged, &SigningKey::generate().unwrap());
    let signed_by_another = enroll(&hub, &forged).await;
    assert!(
        matches!(signed_by_another, Err(ClientError::Api { status: 401, .. })),
        "{signed_by_another:?}"
    );
    assert_eq!(labels_of(&hub, &device_id).await, json!({"site": "lab"}));

    // The refusals spent nothing: the token still enrolls the key's real holder.
    prove_enrollment(&mut forged, &key);
    let answer = enroll(&hub, &forged).await.unwrap();
    assert_eq!(answer["device_id"], device_id.as_str());
    assert_eq!(
        labels_of(&hub, &device_id).await,
        json!({"site": "attacker"})
    );
}

#[tokio::test]
async fn an_enrollment_token_cannot_outlive_a_year() {
    let hub = HubProcess::start();
    for ttl in [0, -5, 366 * 24 * 3600 + 1, i64::MAX] {
        let answer = hub
            .operator()
            .json(
                Method::POST,
                "/api/v1/enrollment-tokens",
                Some(json!({"ttl_seconds": ttl})),
            )
            .await;
        assert!(
            matches!(&answer, Err(ClientError::Api { status: 400, message }) if message.contains("ttl_seconds must be between 1 and")),
            "ttl {ttl}: {answer:?}"
        );
    }
    let year = hub
        .operator()
        .json(
            Method::POST,
            "/api/v1/enrollment-tokens",
            Some(json!({"ttl_seconds": 366 * 24 * 3600})),
        )
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(year["expires"].as_i64().unwrap() > now + 365 * 24 * 3600);
}

#[tokio::test]
async fn a_push_cut_by_kill_9_leaves_nothing_behind_after_a_restart() {
    use std::io::Write;
    // Plain HTTP on loopback, so the test can hold a raw upload open by hand.
    let mut hub = HubProcess::start_with("[tls]\nenabled = false\n");
    let uploads = hub.data_dir().join("uploads");
    let address = hub.url.trim_start_matches("http://").to_owned();
    let mut upload = std::net::TcpStream::connect(&address).unwrap();
    write!(
        upload,
        "POST /api/v1/models/iris/versions HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: application/octet-stream\r\nContent-Length: 50000000\r\n\r\n",
        hub.operator_token
    )
    .unwrap();
    let spooled = || {
        std::fs::read_dir(&uploads)
            .map(|entries| entries.count())
            .unwrap_or(0)
    };
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..200 {
        upload.write_all(&chunk).unwrap();
        if spooled() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(spooled(), 1, "the push is being spooled");
    hub.child.as_mut().unwrap().kill().unwrap();
    hub.child.take().unwrap().wait().unwrap();
    drop(upload);
    assert_eq!(spooled(), 1, "kill -9 left the partial upload");

    hub.serve();
    assert_eq!(spooled(), 0, "the restarted hub removed it");
    assert!(
        hub.log()
            .contains("removed uploads a killed hub left behind")
    );
    let models = hub
        .reader()
        .json(Method::GET, "/api/v1/models", None)
        .await
        .unwrap();
    assert_eq!(models, json!([]), "nothing was registered");
}

#[tokio::test]
async fn every_refusal_the_framework_makes_is_a_json_error() {
    let hub = HubProcess::start();
    let client = hub.operator();
    // (method, path, content type, body, status, what the message says)
    type Case = (
        Method,
        &'static str,
        &'static str,
        Vec<u8>,
        u16,
        &'static str,
    );
    let cases: [Case; 6] = [
        (
            Method::DELETE,
            "/api/v1/models",
            "application/json",
            vec![],
            405,
            "does not take that method",
        ),
        (
            Method::POST,
            "/api/v1/enroll",
            "text/plain",
            b"{}".to_vec(),
            415,
            "Content-Type",
        ),
        (
            Method::POST,
            "/api/v1/enroll",
            "application/json",
            b"{\"token\":".to_vec(),
            400,
            "the request body",
        ),
        (
            Method::POST,
            "/api/v1/enroll",
            "application/json",
            b"[1,2]".to_vec(),
            400,
            "the request body",
        ),
        (
            Method::POST,
            "/api/v1/enrollment-tokens",
            "application/json",
            vec![b' '; 3 << 20],
            413,
            "length limit",
        ),
        (
            Method::GET,
            "/api/v1/nothing-here",
            "application/json",
            vec![],
            404,
            "no such endpoint",
        ),
    ];
    for (method, path, content_type, body, status, says) in cases {
        let (answer_status, answer) = client
            .request(method.clone(), path, content_type, body.into())
            .await
            .unwrap();
        let error: serde_json::Value = serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {answer:?}"));
        assert_eq!(answer_status.as_u16(), status, "{method} {path}: {error}");
        let message = error["error"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{method} {path}: {message}");
    }
    // The hub kept serving through all of it.
    hub.reader()
        .json(Method::GET, "/api/v1/models", None)
        .await
        .unwrap();
}

/// Publishes signed statuses as the device (or as someone replaying what it sent, with the
/// device's certificate: the broker lets it through, and freshness is what refuses it).
struct StatusSender {
    peer: tokio::sync::Mutex<MqttPeer>,
    device_id: String,
    key: SigningKey,
}

impl StatusSender {
    async fn connect(hub: &HubProcess, device_id: &str, key: SigningKey) -> StatusSender {
        let chain = genuine_certificate(hub, device_id, &key);
        let mut peer = MqttPeer::connect(hub, device_id, Credentials::Device { chain, key: &key });
        peer.connected().await.unwrap();
        StatusSender {
            peer: tokio::sync::Mutex::new(peer),
            device_id: device_id.to_owned(),
            key,
        }
    }

    fn signed(&self, online: bool, epoch: u64, beat: u64) -> Vec<u8> {
        use flotilla_common::signing::sign_envelope;
        use flotilla_proto::control::{DeviceStatus, STATUS_PAYLOAD_TYPE};
        let status = DeviceStatus {
            device_id: self.device_id.clone(),
            online,
            connected_at: 0,
            epoch,
            beat,
        };
        serde_json::to_vec(&sign_envelope(
            STATUS_PAYLOAD_TYPE,
            serde_json::to_string(&status).unwrap(),
            &[&self.key],
        ))
        .unwrap()
    }

    async fn send(&self, payload: Vec<u8>) {
        use flotilla_proto::control::topics;
        self.peer
            .lock()
            .await
            .publish(&topics::status(&self.device_id), false, payload)
            .await
            .unwrap();
    }
}

async fn online(hub: &HubProcess, device_id: &str) -> bool {
    hub.reader()
        .json(Method::GET, &format!("/api/v1/devices/{device_id}"), None)
        .await
        .unwrap()["online"]
        .as_bool()
        .unwrap()
}

/// Waits until the hub has taken in `count` more device messages (accepted or refused).
async fn wait_taken_in(hub: &HubProcess, before: u64, count: u64) -> u64 {
    for _ in 0..200 {
        let metrics =
            String::from_utf8(hub.reader().get_raw("/metrics").await.unwrap().to_vec()).unwrap();
        let total: u64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("flotilla_hub_device_messages_accepted_total ")
                    || l.starts_with("flotilla_hub_device_messages_rejected_total ")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        if total >= before + count {
            return total;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the hub did not take in {count} messages");
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_statuses_are_refused_and_silent_devices_go_offline() {
    use flotilla_proto::control::FINAL_BEAT;
    let hub = HubProcess::start_with("[devices]\noffline_after_seconds = 3\n");
    let (device_id, key) = enrolled_device(&hub, "site=lab").await;
    let sender = StatusSender::connect(&hub, &device_id, key).await;
    let first = 1u64 << 32;
    let (online_1, will_1) = (
        sender.signed(true, first, 0),
        sender.signed(false, first, FINAL_BEAT),
    );
    let online_2 = sender.signed(true, first + 1, 0);

    let mut taken = wait_taken_in(&hub, 0, 0).await;
    let steps: [(&Vec<u8>, bool, &str); 5] = [
        (&online_1, true, "the device connects"),
        (&will_1, false, "its connection ends (the last will)"),
        (&online_1, false, "a replayed online does not revive it"),
        (&online_2, true, "its next connection"),
        (&will_1, true, "a replayed last will does not kill it"),
    ];
    for (payload, expect_online, what) in steps {
        sender.send(payload.clone()).await;
        taken = wait_taken_in(&hub, taken, 1).await;
        assert_eq!(online(&hub, &device_id).await, expect_online, "{what}");
    }
    assert!(hub.log().contains("stale status"), "{}", hub.log());

    // Nothing more from the device: it goes offline without a last will.
    let mut went_offline = false;
    for _ in 0..100 {
        if !online(&hub, &device_id).await {
            went_offline = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(went_offline, "a silent device is marked offline");
    let audit = audit_entries(&hub).await;
    assert!(
        audit.iter().any(|e| e["action"] == "device.offline"
            && e["detail"].as_str().unwrap().contains(&device_id)),
        "{audit:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_cap_are_refused_with_503_and_counted() {
    // Plain HTTP on loopback so idle connections can be held open by hand.
    let hub = HubProcess::start_with("max_connections = 3\n[tls]\nenabled = false\n");
    let address = hub.url.trim_start_matches("http://").to_owned();
    let idle: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    let mut refused = None;
    for _ in 0..100 {
        match hub.reader().json(Method::GET, "/api/v1/models", None).await {
            Err(ClientError::Api {
                status: 503,
                message,
            }) => {
                refused = Some(message);
                break;
            }
            // The idle connections may not all be accepted yet.
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let message = refused.expect("a request past the cap is refused");
    assert!(message.contains("limit of 3 open connections"), "{message}");
    drop(idle);
    let mut metrics = String::new();
    for _ in 0..100 {
        if let Ok(text) = hub.reader().get_raw("/metrics").await {
            metrics = String::from_utf8(text.to_vec()).unwrap();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refused_total: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("flotilla_hub_api_connections_refused_total "))
        .expect("the refusals are counted")
        .parse()
        .unwrap();
    assert!(refused_total >= 1, "{metrics}");
    assert!(
        metrics.contains("flotilla_hub_api_connections_limit 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_certificate_renewal_needs_the_device_key_and_a_fresh_time() {
    use flotilla_common::signing::sign_envelope;
    use flotilla_proto::control::{CertificateRenewal, RENEWAL_PAYLOAD_TYPE};
    let hub = HubProcess::start();
    let (device_id, key) = enrolled_device(&hub, "site=lab").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let renewal = |at: i64, by: &SigningKey, for_device: &str| {
        let payload = serde_json::to_string(&CertificateRenewal {
            device_id: for_device.to_owned(),
            at,
        })
        .unwrap();
        serde_json::to_value(sign_envelope(RENEWAL_PAYLOAD_TYPE, payload, &[by])).unwrap()
    };
    let path = format!("/api/v1/devices/{device_id}/certificate");
    let stranger = SigningKey::generate().unwrap();
    let cases = [
        (
            renewal(now, &stranger, &device_id),
            401,
            "not signed by the key",
        ),
        (
            renewal(now - 3600, &key, &device_id),
            401,
            "from the hub's clock",
        ),
        (
            renewal(now, &key, "dev-other"),
            401,
            "not signed by the key",
        ),
    ];
    for (body, status, says) in cases {
        match anonymous_client(&hub)
            .json(Method::POST, &path, Some(body))
            .await
        {
            Err(ClientError::Api { status: s, message }) => {
                assert_eq!(s, status, "{message}");
                assert!(message.contains(says), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    let unknown = anonymous_client(&hub)
        .json(
            Method::POST,
            "/api/v1/devices/dev-nobody/certificate",
            Some(renewal(now, &key, "dev-nobody")),
        )
        .await;
    assert!(
        matches!(unknown, Err(ClientError::Api { status: 404, .. })),
        "{unknown:?}"
    );
    let renewed = anonymous_client(&hub)
        .json(Method::POST, &path, Some(renewal(now, &key, &device_id)))
        .await
        .unwrap();
    assert!(
        renewed["certificate"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(renewed["certificate_expires"].as_i64().unwrap() > now + 80 * 24 * 3600);
}
