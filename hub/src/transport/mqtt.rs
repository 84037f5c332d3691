//! The hub's MQTT client: publishes each device's signed desired state (retained), and
//! takes in devices' reports and status, accepting only what the device's enrolled key signed.

use std::sync::Arc;
use std::time::Duration;

use flotilla_common::signing::verify_envelope;
use flotilla_proto::control::{
    DeviceStatus, REPORTED_PAYLOAD_TYPE, ReportedState, STATUS_PAYLOAD_TYPE, topics,
};
use flotilla_proto::trust::{Envelope, PublicKey};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::fleet::{Fleet, Publication};
use crate::metrics::HubMetrics;
use crate::store::{RegistryStore, StatusTaken};

#[derive(Debug, Clone)]
pub struct HubMqtt {
    client: AsyncClient,
    /// Whether the hub's subscriptions on the current connection are all granted.
    subscribed: tokio::sync::watch::Receiver<bool>,
}

/// What the hub subscribes to on every connection.
const SUBSCRIPTIONS: [&str; 3] = [
    topics::HUB_REPORTED,
    topics::HUB_STATUS,
    flotilla_proto::telemetry::topics::HUB_TELEMETRY,
];

/// Where the broker is and how to log in.
#[derive(Debug, Clone)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, String)>,
    /// MQTT over TLS (`mqtts://`): the hub presents its own certificate and trusts the
    /// broker's if it chains to the hub's CA.
    pub tls: bool,
}

impl BrokerAddress {
    /// Parses `mqtt://[USER:PASS@]HOST:PORT` or `mqtts://...`.
    pub fn parse(url: &str) -> Result<BrokerAddress, String> {
        let (tls, rest) = match url.strip_prefix("mqtts://") {
            Some(rest) => (true, rest),
            None => (
                false,
                url.strip_prefix("mqtt://").ok_or_else(|| {
                    format!("{url:?} is not mqtt://HOST:PORT or mqtts://HOST:PORT")
                })?,
            ),
        };
        let (credentials, host_port) = match rest.rsplit_once('@') {
            Some((login, host_port)) => {
                let (user, pass) = login
                    .split_once(':')
                    .ok_or_else(|| format!("{url:?}: credentials must be USER:PASS"))?;
                (Some((user.to_owned(), pass.to_owned())), host_port)
            }
            None => (None, rest),
        };
        let (host, port) = host_port
            .rsplit_once(':')
            .ok_or_else(|| format!("{url:?} has no port"))?;
        let port = port
            .trim_end_matches('/')
            .parse()
            .map_err(|_| format!("{url:?} has no valid port"))?;
        Ok(BrokerAddress {
            host: host.to_owned(),
            port,
            credentials,
            tls,
        })
    }
}

impl HubMqtt {
    /// Connects and keeps the connection: resubscribes and republishes every desired state
    /// after each (re)connect, so a restarted broker converges too.
    /// `tls` is how the hub speaks TLS to the broker (its CA, its own certificate), needed
    /// when `address` says TLS.
    pub fn start(
        address: &BrokerAddress,
        tls: Option<Arc<rustls::ClientConfig>>,
        fleet: Arc<Fleet>,
        store: Arc<dyn RegistryStore>,
        metrics: Arc<HubMetrics>,
        telemetry_queue: Option<crate::telemetry::TelemetryQueue>,
    ) -> HubMqtt {
        let mut options = MqttOptions::new(
            format!("flotilla-hub-{}", std::process::id()),
            &address.host,
            address.port,
        );
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(
            super::broker::MAX_PAYLOAD_BYTES + 4096,
            super::broker::MAX_PAYLOAD_BYTES + 4096,
        );
        if let Some((user, pass)) = &address.credentials {
            options.set_credentials(user, pass);
        }
        if let Some(tls) = tls.filter(|_| address.tls) {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (subscribed_tx, subscribed) = tokio::sync::watch::channel(false);
        let hub = HubMqtt {
            client: client.clone(),
            subscribed,
        };
        let mut granted = 0;
        let republisher = hub.clone();
        let ingest_queue = start_ingest(store, fleet.registry().clock().clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        granted += 1;
                        if granted == SUBSCRIPTIONS.len() {
                            let _ = subscribed_tx.send(true);
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!("connected to the MQTT broker");
                        granted = 0;
                        let client = client.clone();
                        let (fleet, republisher) = (fleet.clone(), republisher.clone());
                        tokio::spawn(async move {
                            for filter in SUBSCRIPTIONS {
                                if let Err(error) = client.subscribe(filter, QoS::AtLeastOnce).await
                                {
                                    tracing::error!(%error, filter, "subscribe failed");
                                }
                            }
                            match tokio::task::spawn_blocking(move || fleet.all_desired()).await {
                                Ok(Ok(publications)) => {
                                    republisher.publish_desired(&publications).await
                                }
                                Ok(Err(error)) => {
                                    tracing::error!(%error, "cannot read desired states")
                                }
                                Err(error) => tracing::error!(%error, "desired-state task failed"),
                            }
                        });
                    }
                    Ok(Event::Incoming(Packet::Publish(publish)))
                        if publish.topic.ends_with("/telemetry") =>
                    {
                        // Telemetry has its own thread and bounded queue; when it is full the
                        // hub stops reading from the broker until it catches up.
                        match &telemetry_queue {
                            Some(queue) => {
                                if !queue.push(publish.topic, publish.payload).await {
                                    return;
                                }
                            }
                            None => HubMetrics::add(&metrics.device_messages_rejected, 1),
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        // In broker order (an offline will must not overtake the online status
                        // that followed it); a full queue slows reading from the broker
                        // instead of growing memory.
                        if ingest_queue
                            .send((publish.topic, publish.payload))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let _ = subscribed_tx.send(false);
                        tracing::warn!(%error, "MQTT connection lost; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        hub
    }

    /// Waits up to `limit` until the hub's subscriptions are granted: what devices publish
    /// before then has no subscriber and is lost, so the hub says it is ready only after.
    /// Whether they were.
    pub async fn wait_subscribed(&self, limit: Duration) -> bool {
        let mut subscribed = self.subscribed.clone();
        tokio::time::timeout(limit, subscribed.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Publishes desired states, retained, at least once.
    pub async fn publish_desired(&self, publications: &[Publication]) {
        for publication in publications {
            let topic = topics::desired(&publication.device_id);
            if let Err(error) = self
                .client
                .publish(
                    topic,
                    QoS::AtLeastOnce,
                    true,
                    publication.envelope.clone().into_bytes(),
                )
                .await
            {
                tracing::error!(%error, device = %publication.device_id, "cannot publish desired state");
            }
        }
    }
}

/// The one thread that verifies and stores device messages, in the order they arrive.
fn start_ingest(
    store: Arc<dyn RegistryStore>,
    clock: flotilla_common::clock::SharedClock,
    metrics: Arc<HubMetrics>,
) -> tokio::sync::mpsc::Sender<(String, bytes::Bytes)> {
    let (queue, mut messages) = tokio::sync::mpsc::channel::<(String, bytes::Bytes)>(4096);
    std::thread::Builder::new()
        .name("mqtt-ingest".into())
        .spawn(move || {
            while let Some((topic, payload)) = messages.blocking_recv() {
                let accepted = ingest(store.as_ref(), &topic, &payload, clock.now_unix());
                let counter = if accepted.is_ok() {
                    &metrics.device_messages_accepted
                } else {
                    &metrics.device_messages_rejected
                };
                HubMetrics::add(counter, 1);
                if let Err(reason) = accepted {
                    tracing::warn!(%topic, %reason, "device message rejected");
                }
            }
        })
        .expect("the OS lets the hub start its ingest thread");
    queue
}

/// Verifies and stores one message from a device. Everything must check out: the topic's
/// device is enrolled, the envelope is signed by that device's key, and the payload names
/// the same device.
pub fn ingest(
    store: &dyn RegistryStore,
    topic: &str,
    payload: &[u8],
    now: i64,
) -> Result<(), String> {
    let device_id = topics::device_of(topic).ok_or("topic names no device")?;
    let device = store
        .device(device_id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("device {device_id} is not enrolled"))?;
    if device.revoked_at.is_some() {
        return Err(format!("device {device_id} is revoked"));
    }
    let key: PublicKey = device.public_key.clone();
    let envelope: Envelope =
        serde_json::from_slice(payload).map_err(|e| format!("not an envelope: {e}"))?;
    if topic.ends_with("/reported") {
        verify_envelope(
            &envelope,
            REPORTED_PAYLOAD_TYPE,
            std::slice::from_ref(&key),
            1,
        )
        .map_err(|e| format!("report signature: {e}"))?;
        let report: ReportedState =
            serde_json::from_str(&envelope.payload).map_err(|e| format!("report: {e}"))?;
        if report.device_id != device_id {
            return Err(format!(
                "report names device {} on device {device_id}'s topic",
                report.device_id
            ));
        }
        let signed_by_hub = store
            .desired(device_id)
            .map_err(|e| e.to_string())?
            .map(|d| d.sequence)
            .unwrap_or(0);
        if report.desired_sequence > signed_by_hub {
            // The device follows a desired state this hub never signed: the signing key
            // signed it elsewhere. Kept out of the inventory (it would pin the device's
            // reported sequence above every genuine one) and put on record for the operator.
            let detail = format!(
                "{device_id} follows desired sequence {}, beyond the {signed_by_hub} this hub signed: the signing key may have leaked; rotate it (flotilla keys rotate), and the device follows the hub again",
                report.desired_sequence
            );
            store
                .audit(now, "hub", "device.desired_not_signed_here", &detail)
                .map_err(|e| e.to_string())?;
            return Err(detail);
        }
        store
            .record_report(
                device_id,
                report.desired_sequence,
                &report.serving,
                &report.outcomes,
                now,
            )
            .map_err(|e| e.to_string())
    } else if topic.ends_with("/status") {
        verify_envelope(
            &envelope,
            STATUS_PAYLOAD_TYPE,
            std::slice::from_ref(&key),
            1,
        )
        .map_err(|e| format!("status signature: {e}"))?;
        let status: DeviceStatus =
            serde_json::from_str(&envelope.payload).map_err(|e| format!("status: {e}"))?;
        if status.device_id != device_id {
            return Err(format!(
                "status names device {} on device {device_id}'s topic",
                status.device_id
            ));
        }
        match store
            .record_status(device_id, status.online, status.freshness(), now)
            .map_err(|e| e.to_string())?
        {
            StatusTaken::Recorded | StatusTaken::Duplicate => Ok(()),
            StatusTaken::Stale { newest } => Err(format!(
                "stale status (epoch {}, beat {}) from device {device_id}: it has sent (epoch {}, beat {}) already; a replay, or a late message of a connection that ended",
                status.epoch, status.beat, newest.0, newest.1
            )),
        }
    } else {
        Err("not a topic the hub takes in".into())
    }
}

#[cfg(test)]
mod tests {
    use super::BrokerAddress;

    #[test]
    fn broker_urls_parse() {
        let plain = BrokerAddress::parse("mqtt://127.0.0.1:1883").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.credentials),
            ("127.0.0.1", 1883, None)
        );
        let login = BrokerAddress::parse("mqtt://hub:s3cret@broker.local:8883").unwrap();
        assert_eq!(login.credentials, Some(("hub".into(), "s3cret".into())));
        assert!(!login.tls);
        assert!(
            BrokerAddress::parse("mqtts://broker.local:8883")
                .unwrap()
                .tls
        );
        assert!(BrokerAddress::parse("tcp://x:1").is_err());
        assert!(BrokerAddress::parse("mqtt://x").is_err());
    }
}
