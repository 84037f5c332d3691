//! `MqttPeer`: a raw MQTT client of a hub's broker, presenting whatever a test says (a
//! device's certificate, the hub's, an expired one, one from another CA, none), and reading
//! what the broker answers.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::tls::{ClientIdentity, ServerTrust, client_config};
use flotilla_common::signing::SigningKey;
use flotilla_hub::ca::HubCa;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

use crate::support::HubProcess;

/// What a peer presents on the broker's TLS port.
#[derive(Debug)]
pub enum Credentials<'a> {
    /// TLS, trusting the hub's CA, with no client certificate.
    NoCertificate,
    /// A client certificate (PEM chain) for an ed25519 device key.
    Device { chain: String, key: &'a SigningKey },
    /// A client certificate and its PEM key (the hub's identity, say).
    Pem { chain: String, key: String },
    /// Plain MQTT, no TLS at all.
    Plaintext,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The hub's CA, read from its data folder (as a thief of the CA key would).
pub fn hub_ca(hub: &HubProcess) -> HubCa {
    HubCa::load_or_create(&hub.data_dir().join("keys"), now()).unwrap()
}

/// A certificate for `device_id` and `key` from `ca`, valid from `issued` for `days`.
pub fn device_certificate(
    ca: &HubCa,
    device_id: &str,
    key: &SigningKey,
    issued: i64,
    days: u64,
) -> String {
    ca.issue_device(
        device_id,
        &key.public_key().public,
        issued,
        Duration::from_secs(days * 24 * 3600),
    )
    .unwrap()
    .chain_pem
}

/// A certificate for `device_id` from the hub's own CA, valid now.
pub fn genuine_certificate(hub: &HubProcess, device_id: &str, key: &SigningKey) -> String {
    device_certificate(&hub_ca(hub), device_id, key, now(), 30)
}

/// The hub's own identity (common name `flotilla-hub`), from its CA.
pub fn hub_identity(hub: &HubProcess) -> Credentials<'static> {
    let identity = hub_ca(hub)
        .issue_server(&["localhost".to_owned()], now())
        .unwrap();
    Credentials::Pem {
        chain: identity.chain_pem,
        key: identity.key_pem,
    }
}

/// A CA the hub never heard of, in a folder of its own.
pub fn foreign_ca() -> (HubCa, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (HubCa::load_or_create(dir.path(), now()).unwrap(), dir)
}

#[derive(Debug)]
pub struct MqttPeer {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Incoming, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MqttPeer {
    /// Connects (and keeps reconnecting) to the hub's broker as `client_id`.
    pub fn connect(hub: &HubProcess, client_id: &str, credentials: Credentials) -> MqttPeer {
        let (host, port) = hub.mqtt.rsplit_once(':').unwrap();
        let mut options = MqttOptions::new(client_id, host, port.parse().unwrap());
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(4 << 20, 4 << 20);
        let ca = std::fs::read_to_string(hub.ca_file()).unwrap();
        let trust = ServerTrust::ca_pem(&ca, "the hub's CA").unwrap();
        let identity = match &credentials {
            Credentials::NoCertificate | Credentials::Plaintext => None,
            Credentials::Device { chain, key } => {
                Some(ClientIdentity::ed25519(chain, &key.seed()).unwrap())
            }
            Credentials::Pem { chain, key } => Some(ClientIdentity::from_pem(chain, key).unwrap()),
        };
        if !matches!(credentials, Credentials::Plaintext) {
            let config = client_config(&trust, identity.as_ref()).unwrap();
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::clone(&config)),
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (sender, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(Event::Incoming(incoming)) => Ok(incoming),
                    Ok(Event::Outgoing(_)) => continue,
                    Err(error) => Err(format!("{error:?}")),
                };
                let failed = event.is_err();
                if sender.send(event).is_err() {
                    return;
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        });
        MqttPeer {
            client,
            events,
            task,
        }
    }

    /// The first event `pick` chooses within `seconds`.
    pub async fn wait<T>(
        &mut self,
        seconds: u64,
        mut pick: impl FnMut(&Result<Incoming, String>) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if let Some(found) = pick(&event) {
                return Some(found);
            }
        }
        None
    }

    /// Whether the broker accepted the connection: Ok, or what refused it.
    pub async fn connected(&mut self) -> Result<(), String> {
        self.wait(10, |event| match event {
            Ok(Incoming::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => Some(Ok(())),
            Ok(Incoming::ConnAck(ack)) => Some(Err(format!("ConnAck {:?}", ack.code))),
            Err(error) => Some(Err(error.clone())),
            _ => None,
        })
        .await
        .unwrap_or_else(|| Err("no answer in 10 s".into()))
    }

    /// Subscribes and returns whether the broker granted it.
    pub async fn subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        self.wait(10, |event| match event {
            Ok(Incoming::SubAck(ack)) => Some(
                ack.return_codes
                    .iter()
                    .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
            ),
            Err(_) => Some(false),
            _ => None,
        })
        .await
        .expect("the broker answers a subscription")
    }

    /// Publishes at least once; Ok once acknowledged, Err when the broker closed the
    /// connection instead.
    pub async fn publish(
        &mut self,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
        self.wait(10, |event| match event {
            Ok(Incoming::PubAck(_)) => Some(Ok(())),
            Err(error) => Some(Err(error.clone())),
            _ => None,
        })
        .await
        .unwrap_or_else(|| Err("no answer in 10 s".into()))
    }

    /// The payload of the next message on `topic` within `seconds`.
    pub async fn message_on(&mut self, topic: &str, seconds: u64) -> Option<Vec<u8>> {
        self.wait(seconds, |event| match event {
            Ok(Incoming::Publish(p)) if p.topic == topic => Some(p.payload.to_vec()),
            _ => None,
        })
        .await
    }

    /// Waits for the connection to end (the broker dropped it).
    pub async fn dropped(&mut self, seconds: u64) -> Option<String> {
        self.wait(seconds, |event| event.as_ref().err().cloned())
            .await
    }
}
