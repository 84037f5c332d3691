//! MQTT to the hub: receives this device's desired state, publishes signed reports, a
//! signed online/offline status (offline as the last will) and telemetry batches. rumqttc
//! forgets subscriptions on a clean-session reconnect, so every ConnAck subscribes again.
//!
//! Telemetry must be deleted from the spool only once the broker has acknowledged it, but
//! rumqttc reports acknowledgements by packet id, which it assigns itself. Every QoS 1
//! publish therefore goes through one ordered path that queues a tag; the event loop pairs
//! tags with packet ids as the publishes go out (in the same order) and hands the tag of
//! each PUBACK to whoever waits for it. When a connection drops, rumqttc (clean session)
//! discards everything queued or unacknowledged at the next ConnAck, so the tags are
//! forgotten with them; nothing is acknowledged that was not delivered.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_common::backoff::{backoff_delay, random_jitter};
use flotilla_common::signing::{SigningKey, sign_envelope};
use flotilla_proto::control::{DeviceStatus, FINAL_BEAT, STATUS_PAYLOAD_TYPE, topics};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};

/// Pairs QoS 1 publishes with their packet ids and acknowledgements.
#[derive(Debug, Default)]
struct AckTracker {
    /// Tags of publishes handed to the client, not yet seen going out.
    queued: VecDeque<Option<i64>>,
    /// Tags of publishes sent and not yet acknowledged, by packet id.
    in_flight: HashMap<u16, Option<i64>>,
}

#[derive(Debug, Clone)]
pub struct AgentMqtt {
    client: AsyncClient,
    device_id: String,
    /// The event loop task, ended by `stop`.
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    tracker: Arc<Mutex<AckTracker>>,
    /// Held while a QoS 1 publish is queued, so tags and requests keep one order.
    send_order: Arc<tokio::sync::Mutex<()>>,
    connected: watch::Receiver<bool>,
    /// The newest signed report, sent again after every reconnect: a report queued when a
    /// connection dropped is discarded with the session, and the hub must still learn it.
    last_report: Arc<Mutex<Option<Vec<u8>>>>,
    /// The heartbeat task, ended by `stop`.
    heartbeat: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// TLS for the next connection (the device certificate, renewed in place).
    tls: Arc<Mutex<Option<Arc<rustls::ClientConfig>>>>,
}

fn transport(tls: &Option<Arc<rustls::ClientConfig>>) -> rumqttc::Transport {
    match tls {
        Some(config) => {
            rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config.clone()))
        }
        None => rumqttc::Transport::Tcp,
    }
}

/// Queues a QoS 1 publish with its tag (see the module comment).
async fn publish_tagged(
    client: &AsyncClient,
    tracker: &Mutex<AckTracker>,
    send_order: &tokio::sync::Mutex<()>,
    topic: String,
    retain: bool,
    payload: Vec<u8>,
    tag: Option<i64>,
) -> Result<(), rumqttc::ClientError> {
    let _order = send_order.lock().await;
    tracker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .queued
        .push_back(tag);
    let result = client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .await;
    if result.is_err() {
        tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queued
            .pop_back();
    }
    result
}

/// Where this process's statuses start: a generation the agent's store hands out once per
/// process start, so the epochs of one run all lie above every earlier run's.
#[derive(Debug, Clone, Copy)]
pub struct StatusOrigin {
    /// Unix seconds when the process started following the hub.
    pub connected_at: i64,
    /// One more than the last process's (`AgentStore::next_status_generation`).
    pub generation: u64,
}

/// The signed statuses of one device, in the order the hub takes them: each connection a
/// new epoch, each status within it a higher beat, the last will its final beat.
#[derive(Debug)]
struct StatusSigner {
    device_id: String,
    key: Arc<SigningKey>,
    connected_at: i64,
    /// (epoch, next beat).
    position: Mutex<(u64, u64)>,
}

impl StatusSigner {
    fn new(device_id: &str, key: Arc<SigningKey>, origin: StatusOrigin) -> StatusSigner {
        StatusSigner {
            device_id: device_id.to_owned(),
            key,
            connected_at: origin.connected_at,
            // 2^32 connections a process before epochs could meet the next run's.
            position: Mutex::new((origin.generation << 32, 0)),
        }
    }

    /// The next `online` status of the current connection.
    fn online(&self) -> Vec<u8> {
        let (epoch, beat) = {
            let mut position = self.position.lock().unwrap_or_else(|e| e.into_inner());
            position.1 += 1;
            (position.0, position.1 - 1)
        };
        self.signed(true, epoch, beat)
    }

    /// The last will of the current connection.
    fn last_will(&self) -> Vec<u8> {
        let epoch = self.position.lock().unwrap_or_else(|e| e.into_inner()).0;
        self.signed(false, epoch, FINAL_BEAT)
    }

    /// Moves on to a new connection.
    fn next_connection(&self) {
        let mut position = self.position.lock().unwrap_or_else(|e| e.into_inner());
        *position = (position.0 + 1, 0);
    }

    fn signed(&self, online: bool, epoch: u64, beat: u64) -> Vec<u8> {
        let status = DeviceStatus {
            device_id: self.device_id.clone(),
            online,
            connected_at: self.connected_at,
            epoch,
            beat,
        };
        let envelope = sign_envelope(
            STATUS_PAYLOAD_TYPE,
            serde_json::to_string(&status).expect("status serializes"),
            &[&self.key],
        );
        serde_json::to_vec(&envelope).expect("envelope serializes")
    }

    fn last_will_message(&self) -> LastWill {
        LastWill::new(
            topics::status(&self.device_id),
            self.last_will(),
            QoS::AtLeastOnce,
            true,
        )
    }
}

impl AgentMqtt {
    /// Connects to `broker` (`HOST:PORT`) and keeps reconnecting with jittered backoff; over
    /// TLS with `tls` (the hub's CA, the device certificate). Desired-state payloads go to
    /// `desired`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        broker: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        device_id: &str,
        key: Arc<SigningKey>,
        origin: StatusOrigin,
        desired: mpsc::Sender<Vec<u8>>,
        acks: mpsc::UnboundedSender<i64>,
        heartbeat: Duration,
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
        let statuses = Arc::new(StatusSigner::new(device_id, key, origin));
        options.set_last_will(statuses.last_will_message());
        options.set_transport(transport(&tls));
        let tls = Arc::new(Mutex::new(tls));
        let tls_for_loop = tls.clone();
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let statuses_for_heartbeat = statuses.clone();
        let device = device_id.to_owned();
        let client_for_loop = client.clone();
        let tracker = Arc::new(Mutex::new(AckTracker::default()));
        let send_order = Arc::new(tokio::sync::Mutex::new(()));
        let (connected_tx, connected) = watch::channel(false);
        let (tracker_for_loop, order_for_loop) = (tracker.clone(), send_order.clone());
        let last_report: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
        let report_for_loop = last_report.clone();
        let task = tokio::spawn(async move {
            let client = client_for_loop;
            let mut failures = 0u32;
            // Whether a connection was up: only then does an error mean rumqttc moved every
            // queued request into its pending list, which a clean-session ConnAck discards.
            let mut session_up = false;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                        let mut t = tracker_for_loop.lock().unwrap_or_else(|e| e.into_inner());
                        let tag = t.queued.pop_front().flatten();
                        t.in_flight.insert(pkid, tag);
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let tag = tracker_for_loop
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .in_flight
                            .remove(&ack.pkid)
                            .flatten();
                        if let Some(tag) = tag {
                            let _ = acks.send(tag);
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        failures = 0;
                        session_up = true;
                        let _ = connected_tx.send(true);
                        tracing::info!("connected to the hub's MQTT broker");
                        let (client, statuses, device) =
                            (client.clone(), statuses.clone(), device.clone());
                        let (tracker, send_order) =
                            (tracker_for_loop.clone(), order_for_loop.clone());
                        let report = report_for_loop
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone();
                        tokio::spawn(async move {
                            if let Err(error) = client
                                .subscribe(topics::desired(&device), QoS::AtLeastOnce)
                                .await
                            {
                                tracing::warn!(%error, "cannot subscribe to desired state");
                            }
                            let online = statuses.online();
                            if let Err(error) = publish_tagged(
                                &client,
                                &tracker,
                                &send_order,
                                topics::status(&device),
                                true,
                                online,
                                None,
                            )
                            .await
                            {
                                tracing::warn!(%error, "cannot publish status");
                            }
                            if let Some(report) = report
                                && let Err(error) = publish_tagged(
                                    &client,
                                    &tracker,
                                    &send_order,
                                    topics::reported(&device),
                                    false,
                                    report,
                                    None,
                                )
                                .await
                            {
                                tracing::warn!(%error, "cannot publish the last report again");
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
                        let _ = connected_tx.send(false);
                        if std::mem::take(&mut session_up) {
                            // The publishes queued or in flight were dropped with the session
                            // (clean session): forget their tags, so no later acknowledgement is
                            // paired with them. Their senders send again (the telemetry
                            // uploader re-reads its spool). Held so no publish is half-queued.
                            let _order = order_for_loop.lock().await;
                            let mut t = tracker_for_loop.lock().unwrap_or_else(|e| e.into_inner());
                            t.queued.clear();
                            t.in_flight.clear();
                        }
                        // The next connection is a new epoch with its own last will, so the
                        // will of this one (which the broker may be sending now) can never
                        // be taken after the next connection's `online`.
                        statuses.next_connection();
                        eventloop
                            .mqtt_options
                            .set_last_will(statuses.last_will_message());
                        eventloop.mqtt_options.set_transport(transport(
                            &tls_for_loop.lock().unwrap_or_else(|e| e.into_inner()),
                        ));
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
        let mqtt = AgentMqtt {
            client,
            device_id: device_id.to_owned(),
            task: Arc::new(Mutex::new(Some(task))),
            tracker,
            send_order,
            connected,
            last_report,
            heartbeat: Arc::new(Mutex::new(None)),
            tls,
        };
        mqtt.start_heartbeat(heartbeat, statuses_for_heartbeat);
        Ok(mqtt)
    }

    /// Publishes the signed online status every `interval` while connected, so the hub's
    /// "last seen" stays current between reports (skipped while offline: a queued heartbeat
    /// would only be discarded with the session).
    fn start_heartbeat(&self, interval: Duration, statuses: Arc<StatusSigner>) {
        if interval.is_zero() {
            return;
        }
        let mqtt = self.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                if !*mqtt.connected.borrow() {
                    continue;
                }
                let status = statuses.online();
                if let Err(error) = publish_tagged(
                    &mqtt.client,
                    &mqtt.tracker,
                    &mqtt.send_order,
                    topics::status(&mqtt.device_id),
                    true,
                    status,
                    None,
                )
                .await
                {
                    tracing::debug!(%error, "cannot publish a heartbeat");
                }
            }
        });
        self.heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task);
    }

    /// Uses `tls` (a renewed certificate) from the next connection on.
    pub fn replace_tls(&self, tls: Arc<rustls::ClientConfig>) {
        *self.tls.lock().unwrap_or_else(|e| e.into_inner()) = Some(tls);
    }

    /// Drops the connection as a crash would (no DISCONNECT, so the broker sends the last
    /// will); for simulations and tests.
    pub fn drop_connection(&self) {
        if let Some(task) = self
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }

    /// Disconnects for good (the last will is not sent: this is a deliberate stop).
    pub fn stop(&self) {
        if let Some(task) = self
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
        let _ = self.client.try_disconnect();
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }

    /// Publishes a signed report; when offline it is queued by the client and sent on reconnect.
    pub async fn publish_report(&self, envelope: Vec<u8>) {
        *self.last_report.lock().unwrap_or_else(|e| e.into_inner()) = Some(envelope.clone());
        if let Err(error) = publish_tagged(
            &self.client,
            &self.tracker,
            &self.send_order,
            topics::reported(&self.device_id),
            false,
            envelope,
            None,
        )
        .await
        {
            tracing::warn!(%error, "cannot queue report");
        }
    }

    /// Publishes a sealed telemetry batch; `tag` comes back on the acks channel once the
    /// broker has acknowledged it.
    pub async fn publish_telemetry(&self, frame: Vec<u8>, tag: i64) -> Result<(), String> {
        publish_tagged(
            &self.client,
            &self.tracker,
            &self.send_order,
            flotilla_proto::telemetry::topics::telemetry(&self.device_id),
            false,
            frame,
            Some(tag),
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Whether the broker connection is up, and changes to it.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freshness(payload: &[u8]) -> ((u64, u64), bool) {
        let envelope: flotilla_proto::trust::Envelope = serde_json::from_slice(payload).unwrap();
        let status: DeviceStatus = serde_json::from_str(&envelope.payload).unwrap();
        (status.freshness(), status.online)
    }

    #[test]
    fn statuses_only_ever_grow_across_connections_and_runs() {
        let key = Arc::new(SigningKey::generate().unwrap());
        let origin = StatusOrigin {
            connected_at: 1,
            generation: 7,
        };
        let signer = StatusSigner::new("dev-1", key.clone(), origin);
        let mut sent = vec![];
        for _ in 0..3 {
            sent.push(freshness(&signer.online()));
            sent.push(freshness(&signer.online()));
            sent.push(freshness(&signer.last_will()));
            signer.next_connection();
        }
        // The next run starts above all of this one.
        let next_run = StatusSigner::new(
            "dev-1",
            key,
            StatusOrigin {
                connected_at: 2,
                generation: 8,
            },
        );
        sent.push(freshness(&next_run.online()));
        for pair in sent.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{sent:?}");
        }
        assert!(sent.iter().step_by(3).all(|(_, online)| *online));
        assert!(!sent[2].1, "the will says offline");
    }
}
