//! The hub's QUIC artifact endpoint against the agent's QUIC client: resumable downloads
//! with the pinned certificate, refusals, and a connection dropped mid-download. These live
//! here because only fleet-sim depends on both the hub and the agent.

use std::net::SocketAddr;
use std::sync::Arc;

use flotilla_agent::transport::quic::{QuicArtifacts, QuicError};
use flotilla_common::artifact_protocol::Encoding;
use flotilla_hub::metrics::HubMetrics;
use flotilla_hub::transport::quic::{QuicIdentity, start};
use sha2::{Digest, Sha256};

async fn serve(bytes: &[u8]) -> (tempfile::TempDir, SocketAddr, QuicIdentity, String) {
    let dir = tempfile::tempdir().unwrap();
    let sha = hex::encode(Sha256::digest(bytes));
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(artifacts.join(&sha[..2])).unwrap();
    std::fs::write(artifacts.join(&sha[..2]).join(&sha), bytes).unwrap();
    let identity = QuicIdentity::load_or_create(dir.path()).unwrap();
    let address = start(
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        &identity,
        artifacts,
        Arc::new(HubMetrics::default()),
        None,
    )
    .unwrap();
    (dir, address, identity, sha)
}

#[tokio::test]
async fn downloads_resume_over_quic_with_the_pinned_certificate() {
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let (dir, address, identity, sha) = serve(&bytes).await;
    let client = QuicArtifacts::new(&address.to_string(), &identity.pin()).unwrap();
    let part = dir.path().join("download.part");
    std::fs::write(&part, &bytes[..123_456]).unwrap();
    client
        .download(&sha, &Encoding::Raw, &part, bytes.len() as u64)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&part).unwrap(),
        bytes,
        "resumed at the offset, byte for byte"
    );
    // The identity is kept: a restarted hub keeps the pin devices hold.
    assert_eq!(
        QuicIdentity::load_or_create(dir.path()).unwrap().pin(),
        identity.pin()
    );
}

#[tokio::test]
async fn a_wrong_pin_unknown_artifacts_and_oversized_files_are_refused() {
    let (dir, address, _, sha) = serve(&[5u8; 1000]).await;
    let other_keys = dir.path().join("other-keys");
    std::fs::create_dir_all(&other_keys).unwrap();
    let other = QuicIdentity::load_or_create(&other_keys).unwrap();
    let impostor = QuicArtifacts::new(&address.to_string(), &other.pin()).unwrap();
    let error = impostor
        .download(&sha, &Encoding::Raw, &dir.path().join("a.part"), 1000)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("does not match the pin"),
        "{error}"
    );

    let identity = QuicIdentity::load_or_create(dir.path()).unwrap();
    let client = QuicArtifacts::new(&address.to_string(), &identity.pin()).unwrap();
    let missing = client
        .download(
            &"0".repeat(64),
            &Encoding::Raw,
            &dir.path().join("b.part"),
            10,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(missing, QuicError::Refused(ref m) if m.contains("no artifact")),
        "{missing}"
    );
    let too_large = client
        .download(&sha, &Encoding::Raw, &dir.path().join("c.part"), 999)
        .await
        .unwrap_err();
    assert!(
        matches!(too_large, QuicError::TooLarge { expected: 999 }),
        "{too_large}"
    );
}

/// The network goes away mid-download (the client drops the connection): the bytes on
/// disk stay, and the next download resumes from them to the exact file.
#[tokio::test]
async fn a_dropped_connection_mid_download_resumes() {
    let bytes: Vec<u8> = (0..30_000_000u32).map(|i| (i % 241) as u8).collect();
    let (dir, address, identity, sha) = serve(&bytes).await;
    let client = QuicArtifacts::new(&address.to_string(), &identity.pin()).unwrap();
    let part = dir.path().join("cut.part");
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(15),
        client.download(&sha, &Encoding::Raw, &part, bytes.len() as u64),
    )
    .await;
    let kept = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert!(
        cut.is_err() || kept == bytes.len() as u64,
        "either cut off or (on a very fast machine) done"
    );
    let fresh = QuicArtifacts::new(&address.to_string(), &identity.pin()).unwrap();
    fresh
        .download(&sha, &Encoding::Raw, &part, bytes.len() as u64)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&part).unwrap(),
        bytes,
        "resumed from {kept} bytes, byte for byte"
    );
}

/// With TLS on (the default), a real hub's QUIC endpoint takes only device certificates it
/// issued and has not revoked, as its HTTPS ranges do.
#[tokio::test(flavor = "multi_thread")]
async fn a_hub_serves_quic_only_to_its_devices_certificates() {
    use flotilla_api::http::Method;
    use flotilla_common::signing::{SigningKey, prove_enrollment};
    use flotilla_proto::control::{EnrollRequest, EnrollResponse};
    use flotilla_testkit::{HubProcess, RawApi, fixture};

    let hub = HubProcess::start();
    let pushed = hub
        .operator()
        .upload(
            "/api/v1/models/scaler/versions",
            std::fs::read(fixture("scaler_v1.onnx")).unwrap().into(),
        )
        .await
        .unwrap();
    let (sha, size) = (
        pushed["sha256"].as_str().unwrap().to_owned(),
        pushed["size"].as_u64().unwrap(),
    );
    let key = SigningKey::generate().unwrap();
    let mut request = EnrollRequest {
        token: hub.enroll_token("").await,
        public_key: key.public_key(),
        hardware: Default::default(),
        agent_version: "test".into(),
        proof: String::new(),
    };
    prove_enrollment(&mut request, &key);
    let enrolled: EnrollResponse = serde_json::from_value(
        hub.anonymous()
            .json(
                Method::POST,
                "/api/v1/enroll",
                Some(serde_json::to_value(&request).unwrap()),
            )
            .await
            .unwrap(),
    )
    .unwrap();
    let (address, pin) = (
        enrolled.artifacts_quic.clone().unwrap(),
        enrolled.quic_certificate_sha256.clone().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let download = |client: QuicArtifacts, name: &'static str| {
        let (sha, part) = (sha.clone(), dir.path().join(name));
        async move { client.download(&sha, &Encoding::Raw, &part, size).await }
    };

    let anonymous = QuicArtifacts::new(&address, &pin).unwrap();
    let refused = download(anonymous, "anonymous.part").await.unwrap_err();
    assert!(
        matches!(refused, QuicError::Unreachable { .. }),
        "{refused}"
    );

    let device = QuicArtifacts::new(&address, &pin).unwrap();
    let identity =
        flotilla_api::tls::ClientIdentity::ed25519(&enrolled.certificate, &key.seed()).unwrap();
    device.set_identity(&identity).unwrap();
    download(device.clone(), "device.part").await.unwrap();

    let revoked = hub.cli(
        Some(&hub.operator_token),
        &["device", "revoke", &enrolled.device_id],
    );
    assert!(revoked.status.success());
    let refused = download(device, "revoked.part").await.unwrap_err();
    assert!(
        matches!(refused, QuicError::Refused(ref m) if m.contains("was revoked")),
        "{refused}"
    );
    assert!(hub.log().contains("QUIC download refused"), "{}", hub.log());
}
