//! Drains the spool over MQTT: oldest first, at most a few batches unacknowledged, at a
//! limited rate, and a batch leaves the spool only when the broker has acknowledged it.
//! After a reconnect it waits a random moment first, so a fleet coming back at once spreads
//! its backlog instead of flattening the hub.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use std::sync::atomic::Ordering;

use super::TelemetryStatus;
use super::spool::Spool;
use crate::transport::mqtt::AgentMqtt;

/// Batches sent and not yet acknowledged, at most.
const MAX_IN_FLIGHT: usize = 4;
/// Unacknowledged this long while connected: send again (the hub deduplicates).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
pub struct DrainSettings {
    /// Batches per second at most.
    pub per_second: f64,
    /// The longest random wait after a reconnect before draining.
    pub reconnect_jitter: Duration,
    /// This device's wait between a new window and its sending (its place in the fleet's
    /// upload spread).
    pub upload_delay: Duration,
}

pub async fn run(
    status: Arc<TelemetryStatus>,
    mqtt: AgentMqtt,
    mut acks: mpsc::UnboundedReceiver<i64>,
    spooled: Arc<Notify>,
    settings: DrainSettings,
) {
    let spool = status.spool.clone();
    // Counted once per batch: a batch sent twice (after a reconnect) may be acknowledged twice.
    let acknowledged = |spool: &Spool, seq: i64| {
        if spool.remove(seq) {
            status.windows_acknowledged.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut connected = mqtt.connected();
    let gap = Duration::from_secs_f64(1.0 / settings.per_second.max(0.001));
    loop {
        // Offline: only acknowledgements of earlier sends can arrive.
        while !*connected.borrow_and_update() {
            tokio::select! {
                changed = connected.changed() => if changed.is_err() { return },
                Some(seq) = acks.recv() => acknowledged(&spool, seq),
            }
        }
        let jitter = settings
            .reconnect_jitter
            .mul_f64(flotilla_common::backoff::random_jitter());
        tokio::time::sleep(jitter).await;
        let mut in_flight = BTreeSet::new();
        let mut last_sent = 0i64;
        let mut last_progress = tokio::time::Instant::now();
        'connected: loop {
            if !*connected.borrow() {
                break 'connected;
            }
            if in_flight.len() < MAX_IN_FLIGHT
                && let Some((seq, frame)) = spool.oldest(last_sent, 1).pop()
            {
                {
                    // Marked first: from here on the broker may have it.
                    spool.mark_sent(seq);
                    if mqtt.publish_telemetry(frame, seq).await.is_err() {
                        break 'connected;
                    }
                    in_flight.insert(seq);
                    last_sent = seq;
                    tokio::select! {
                        _ = tokio::time::sleep(gap) => {}
                        changed = connected.changed() => if changed.is_err() { return },
                    }
                    while let Ok(seq) = acks.try_recv() {
                        acknowledged(&spool, seq);
                        in_flight.remove(&seq);
                        last_progress = tokio::time::Instant::now();
                    }
                    continue;
                }
            }
            // Nothing to send now: wait for an ack, a new batch or the connection to change.
            tokio::select! {
                Some(seq) = acks.recv() => {
                    acknowledged(&spool, seq);
                    in_flight.remove(&seq);
                    last_progress = tokio::time::Instant::now();
                }
                _ = spooled.notified() => {
                    if !settings.upload_delay.is_zero() {
                        tokio::time::sleep(settings.upload_delay).await;
                    }
                }
                changed = connected.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(ACK_TIMEOUT) => {}
            }
            if !in_flight.is_empty() && last_progress.elapsed() >= ACK_TIMEOUT {
                tracing::warn!(
                    unacknowledged = in_flight.len(),
                    "telemetry not acknowledged in time; sending again"
                );
                in_flight.clear();
                last_sent = 0;
                last_progress = tokio::time::Instant::now();
            }
        }
    }
}
