//! MQTT to the hub: receives this device's desired state, publishes signed reports and a
//! signed online/offline status (offline as the last will). rumqttc forgets subscriptions
//! on a clean-session reconnect, so every ConnAck subscribes again.

use std::sync::Arc;
use std::time::Duration;

use flotilla_common::backoff::{backoff_delay, random_jitter};
use flotilla_common::signing::{SigningKey, sign_envelope};
use flotilla_proto::control::{DeviceStatus, STATUS_PAYLOAD_TYPE, topics};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct AgentMqtt {
    client: AsyncClient,
    device_id: String,
    /// The event loop task, ended by `stop`.
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

fn status_payload(device_id: &str, online: bool, connected_at: i64, key: &SigningKey) -> Vec<u8> {
    let status = DeviceStatus {
        device_id: device_id.to_owned(),
        online,
        connected_at,
    };
    let envelope = sign_envelope(
        STATUS_PAYLOAD_TYPE,
        serde_json::to_string(&status).expect("status serializes"),
        &[key],
    );
    serde_json::to_vec(&envelope).expect("envelope serializes")
}

impl AgentMqtt {
    /// Connects to `broker` (`HOST:PORT`) and keeps reconnecting with jittered backoff.
    /// Desired-state payloads go to `desired`.
    pub fn start(
        broker: &str,
        device_id: &str,
        key: Arc<SigningKey>,
        now: i64,
        desired: mpsc::Sender<Vec<u8>>,
    ) -> Result<AgentMqtt, String> {
        let (host, port) = broker
            .rsplit_once(':')
            .ok_or_else(|| format!("broker address {broker:?} is not HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("broker address {broker:?} has no valid port"))?;
        let mut options = MqttOptions::new(device_id, host, port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
        options.set_last_will(LastWill::new(
            topics::status(device_id),
            status_payload(device_id, false, now, &key),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let device = device_id.to_owned();
        let client_for_loop = client.clone();
        let task = tokio::spawn(async move {
            let client = client_for_loop;
            let mut failures = 0u32;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        failures = 0;
                        tracing::info!("connected to the hub's MQTT broker");
                        let (client, key, device) = (client.clone(), key.clone(), device.clone());
                        tokio::spawn(async move {
                            if let Err(error) = client
                                .subscribe(topics::desired(&device), QoS::AtLeastOnce)
                                .await
                            {
                                tracing::warn!(%error, "cannot subscribe to desired state");
                            }
                            let online = status_payload(&device, true, now, &key);
                            if let Err(error) = client
                                .publish(topics::status(&device), QoS::AtLeastOnce, true, online)
                                .await
                            {
                                tracing::warn!(%error, "cannot publish status");
                            }
                        });
                    }
                    Ok(Event::Incoming(Packet::Publish(publish)))
                        if publish.topic == topics::desired(&device) =>
                    {
                        if desired.send(publish.payload.to_vec()).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        let delay = backoff_delay(
                            failures,
                            Duration::from_millis(200),
                            Duration::from_secs(30),
                            random_jitter(),
                        );
                        failures = failures.saturating_add(1);
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "hub broker unreachable; still serving");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        });
        Ok(AgentMqtt {
            client,
            device_id: device_id.to_owned(),
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        })
    }

    /// Disconnects for good (the last will is not sent: this is a deliberate stop).
    pub fn stop(&self) {
        let _ = self.client.try_disconnect();
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }

    /// Publishes a signed report; when offline it is queued by the client and sent on reconnect.
    pub async fn publish_report(&self, envelope: Vec<u8>) {
        if let Err(error) = self
            .client
            .publish(
                topics::reported(&self.device_id),
                QoS::AtLeastOnce,
                false,
                envelope,
            )
            .await
        {
            tracing::warn!(%error, "cannot queue report");
        }
    }
}
