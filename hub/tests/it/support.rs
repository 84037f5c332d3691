//! Test support: the shared test kit's real processes, and the few helpers these tests
//! phrase their own way.

use std::collections::BTreeMap;

use flotilla_api::http::Method;
use flotilla_common::signing::{SigningKey, prove_enrollment};
use flotilla_proto::control::EnrollRequest;

pub use flotilla_testkit::{
    AgentRun, HubProcess, Mosquitto, RawApi, TcpProxy, fixture, stderr_of_failure, stdout,
};

/// A loopback UDP port free right now (a QUIC endpoint another process binds).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A one-time enrollment token with `labels` (k=v,k=v), valid ten minutes.
pub async fn enroll_token(hub: &HubProcess, labels: &str) -> String {
    hub.enroll_token(labels).await
}

/// A device enrolled by the test itself (with its proof of possession), so it can sign
/// messages of every kind: its id and key.
pub async fn enrolled_device(hub: &HubProcess, labels: &str) -> (String, SigningKey) {
    let (id, key, _) = enrolled_device_with_certificate(hub, labels).await;
    (id, key)
}

/// An enrolled device with the certificate (PEM chain) the hub issued it.
pub async fn enrolled_device_with_certificate(
    hub: &HubProcess,
    labels: &str,
) -> (String, SigningKey, String) {
    enrolled_device_with_token(hub, &enroll_token(hub, labels).await).await
}

/// A device enrolled by the test with `token` (which it spends): id, key, certificate.
pub async fn enrolled_device_with_token(
    hub: &HubProcess,
    token: &str,
) -> (String, SigningKey, String) {
    let key = SigningKey::generate().unwrap();
    let mut request = EnrollRequest {
        token: token.to_owned(),
        public_key: key.public_key(),
        hardware: BTreeMap::new(),
        agent_version: "test".into(),
        proof: String::new(),
    };
    prove_enrollment(&mut request, &key);
    let answer = anonymous_client(hub)
        .json(
            Method::POST,
            "/api/v1/enroll",
            Some(serde_json::to_value(&request).unwrap()),
        )
        .await
        .unwrap();
    (
        answer["device_id"].as_str().unwrap().to_owned(),
        key,
        answer["certificate"].as_str().unwrap().to_owned(),
    )
}

/// A client with no admin token, as a device or a stranger is.
pub fn anonymous_client(hub: &HubProcess) -> flotilla_api::AdminClient {
    hub.anonymous()
}

/// A fixture with a doc string appended: a model that behaves the same with other bytes
/// (so the registry takes it as a new version; a protobuf field appended to a message
/// replaces the earlier value).
pub fn fixture_with_doc_string(name: &str, doc: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(fixture(name)).unwrap();
    assert!(doc.len() < 128, "one-byte length");
    bytes.push(0x32); // field 6 (doc_string), length-delimited
    bytes.push(doc.len() as u8);
    bytes.extend_from_slice(doc.as_bytes());
    bytes
}

/// The hub's audit log, as JSON entries.
pub async fn audit_entries(hub: &HubProcess) -> Vec<serde_json::Value> {
    hub.reader()
        .json(Method::GET, "/api/v1/audit", None)
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

pub async fn device(hub: &HubProcess, id: &str) -> serde_json::Value {
    hub.reader()
        .json(Method::GET, &format!("/api/v1/devices/{id}"), None)
        .await
        .unwrap()
}

/// Waits until the hub's inventory shows what the device reported.
pub async fn wait_reported(
    hub: &HubProcess,
    id: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..300 {
        let value = device(hub, id).await;
        if check(&value) {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "device {id} never reported as expected: {}",
        device(hub, id).await
    );
}
