//! Across a real network, not loopback: the hub in one network namespace, an agent in
//! another behind a link with delay and loss (`tc netem`; a rate-limited link on kernels
//! without netem), the operator and the rogue
//! clients in the test's own namespace (`NetLab`); and a man in the middle with its own
//! certificate between an agent and the hub.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::http::Method;
use flotilla_testkit::{HUB_ADDRESS, NetLab};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::broker_acl::devices_are_confined;
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_across_namespaces_with_delay_and_loss_refuses_every_stranger() {
    let lab = match NetLab::create() {
        Ok(lab) => lab,
        Err(reason) => {
            eprintln!(
                "SKIPPED: cannot make network namespaces here ({reason}); this test needs root, as CI has"
            );
            return;
        }
    };
    let impairment = lab.impair_device_link(40, 1.0, "20mbit").unwrap();
    eprintln!("device link: {impairment}");
    let a = HUB_ADDRESS;
    let mut hub = HubProcess::init(&format!(
        "listen = \"{a}:7070\"\nadvertise_url = \"https://{a}:7070\"\n[broker]\nlisten = \"{a}:8883\"\n[quic]\nlisten = \"{a}:7443\"\n"
    ));
    hub.netns = Some(lab.hub_ns.clone());
    hub.serve();
    assert_eq!(hub.mqtt, format!("{a}:8883"));

    // Strangers from the test's namespace, across its veth: the whole broker suite.
    devices_are_confined(&hub, true).await;

    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut plain = std::net::TcpStream::connect((a, 7070)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /api/v1/models HTTP/1.1\r\nHost: hub\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1 2"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // A device in its own namespace, 40 ms away with 1% loss (or on a 20 Mbit/s link where
    // the kernel has no netem): enrolls with the pinned
    // token, installs over QUIC (mutual TLS), reports over MQTT over TLS.
    let token = enroll_token(&hub, "site=far").await;
    let agent = AgentRun::start_in(&hub, &token, "", Some(&lab.device_ns)).unwrap();
    hub.operator()
        .json(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"model": "scaler", "version": "1", "selector": "site=far"})),
        )
        .await
        .unwrap();
    agent.wait_serving("scaler", 1);
    assert!(
        agent.log().contains("downloaded over QUIC"),
        "{}",
        agent.log()
    );
    // The far device's report reaches the hub.
    wait_reported(&hub, &agent.device_id, |d| {
        d["serving"]["scaler"] == 1 && d["online"] == true
    })
    .await;
}

/// A TLS proxy with its own certificate that forwards to the hub: what someone on the path
/// would run to read the traffic.
async fn man_in_the_middle(hub: &HubProcess) -> std::net::SocketAddr {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![made.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let trust = flotilla_api::tls::ServerTrust::ca_pem(
        &std::fs::read_to_string(hub.ca_file()).unwrap(),
        "ca.crt",
    )
    .unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(flotilla_api::tls::client_config(&trust, None).unwrap());
    let upstream = hub.url.trim_start_matches("https://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (acceptor, connector, upstream) =
                (acceptor.clone(), connector.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut client) = acceptor.accept(client).await else {
                    return;
                };
                let server = TcpStream::connect(&upstream).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let mut server = connector.connect(name, server).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn a_man_in_the_middle_with_its_own_certificate_is_refused() {
    let hub = HubProcess::start();
    let proxy = man_in_the_middle(&hub).await;
    let token = enroll_token(&hub, "").await;

    // The agent, told the proxy's address: its token pins the hub's CA.
    let mut intercepted = HubProcess::init("");
    intercepted.url = format!("https://{proxy}");
    let refused = AgentRun::start(&intercepted, &token).unwrap_err();
    assert!(
        refused.contains("is not the hub this device trusts")
            && refused.contains("pinned fingerprint"),
        "{refused}"
    );
    // Nothing reached the hub: the token still enrolls the real device.
    let agent = AgentRun::start(&hub, &token).unwrap();
    assert!(!agent.device_id.is_empty());

    // An operator trusting the hub's CA is refused too, before the token is sent.
    let output = std::process::Command::new(flotilla_testkit::workspace_binary("flotilla"))
        .args(["model", "list"])
        .env("FLOTILLA_HUB", format!("https://{proxy}"))
        .env("FLOTILLA_CA_FILE", hub.ca_file())
        .env("FLOTILLA_TOKEN", &hub.read_token)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("certificate"), "{error}");
}
