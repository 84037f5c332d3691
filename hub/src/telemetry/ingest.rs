//! Taking in telemetry frames: parse, check the sender's signature, decode, check the batch
//! against the model version it names, deduplicate by batch id, store. Runs on its own thread
//! fed by a bounded queue, and writes many windows per transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flotilla_common::sketch::Kind;
use flotilla_common::telemetry::{FrameError, WindowBatch, open_frame};
use flotilla_proto::control::topics;
use flotilla_proto::telemetry::FeatureMap;
use flotilla_proto::trust::{Envelope, ModelManifest, PublicKey};

use crate::metrics::HubMetrics;
use crate::store::{NewWindow, RegistryStore, TelemetryStore};

/// Windows older than this are refused: replays of old traffic, or clocks far off.
pub const MAX_WINDOW_AGE_MS: i64 = 30 * 24 * 3600 * 1000;
/// Windows that start further in the future than this are refused (device clock wrong).
const MAX_CLOCK_AHEAD_MS: i64 = 24 * 3600 * 1000;

/// A model version's feature map as cached (`None`: the version has none).
type FeatureMapEntry = Option<Arc<FeatureMap>>;

/// Why a frame was refused; the label is the metric's `reason`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

fn reject(reason: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        message: message.into(),
    }
}

/// What one call to `ingest` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestOutcome {
    pub stored: u64,
    pub duplicates: u64,
    pub rejected: Vec<Rejection>,
}

#[derive(Debug)]
pub struct TelemetryIngest {
    telemetry: Arc<TelemetryStore>,
    registry: Arc<dyn RegistryStore>,
    metrics: Arc<HubMetrics>,
    keys: Mutex<HashMap<String, PublicKey>>,
    /// Each known model version's feature map (`None`: the version has none).
    feature_maps: Mutex<HashMap<(String, u64), FeatureMapEntry>>,
}

impl TelemetryIngest {
    pub fn new(
        telemetry: Arc<TelemetryStore>,
        registry: Arc<dyn RegistryStore>,
        metrics: Arc<HubMetrics>,
    ) -> TelemetryIngest {
        TelemetryIngest {
            telemetry,
            registry,
            metrics,
            keys: Mutex::new(HashMap::new()),
            feature_maps: Mutex::new(HashMap::new()),
        }
    }

    fn device_key(&self, device_id: &str) -> Result<PublicKey, Rejection> {
        if let Some(key) = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device_id)
        {
            return Ok(key.clone());
        }
        let device = self
            .registry
            .device(device_id)
            .map_err(|e| reject("store", e.to_string()))?
            .ok_or_else(|| {
                reject(
                    "unknown_device",
                    format!("device {device_id} is not enrolled"),
                )
            })?;
        let key: PublicKey = serde_json::from_value(device.public_key)
            .map_err(|e| reject("store", format!("stored key: {e}")))?;
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device_id.to_owned(), key.clone());
        Ok(key)
    }

    fn feature_map(&self, model: &str, version: u64) -> Result<Option<Arc<FeatureMap>>, Rejection> {
        let key = (model.to_owned(), version);
        if let Some(map) = self
            .feature_maps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(map.clone());
        }
        let record = self
            .registry
            .version(model, version)
            .map_err(|e| reject("store", e.to_string()))?
            .ok_or_else(|| {
                reject(
                    "unknown_version",
                    format!("model {model:?} has no version {version}"),
                )
            })?;
        let envelope: Envelope = serde_json::from_str(&record.manifest)
            .map_err(|e| reject("store", format!("stored manifest: {e}")))?;
        let manifest: ModelManifest = serde_json::from_str(&envelope.payload)
            .map_err(|e| reject("store", format!("stored manifest: {e}")))?;
        let map = manifest.features.map(Arc::new);
        self.feature_maps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, map.clone());
        Ok(map)
    }

    /// Everything a frame must pass before it is stored.
    pub fn check(
        &self,
        topic: &str,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<(WindowBatch, Vec<u8>), Rejection> {
        let topic_device =
            topics::device_of(topic).ok_or_else(|| reject("malformed", "topic names no device"))?;
        let frame = open_frame(payload).map_err(|e| reject(e.reason(), e.to_string()))?;
        if frame.device_id != topic_device {
            return Err(reject(
                "device_mismatch",
                format!(
                    "frame from device {} on device {topic_device}'s topic",
                    frame.device_id
                ),
            ));
        }
        let key = self.device_key(frame.device_id)?;
        let batch = frame
            .verify_and_decode(&key)
            .map_err(|e: FrameError| reject(e.reason(), e.to_string()))?;
        if batch.window_end_ms < now_ms - MAX_WINDOW_AGE_MS {
            return Err(reject(
                "stale",
                format!(
                    "window ended at {} ms, older than the 30 days kept",
                    batch.window_end_ms
                ),
            ));
        }
        if batch.window_start_ms > now_ms + MAX_CLOCK_AHEAD_MS
            || batch.window_end_ms < batch.window_start_ms
        {
            return Err(reject(
                "clock",
                "window times are in the future or reversed; check the device clock",
            ));
        }
        if let Some(map) = self.feature_map(&batch.model, batch.version)? {
            let names: Vec<&str> = batch.features.iter().map(|f| f.name.as_str()).collect();
            if !batch.features.is_empty()
                && names != map.features.iter().map(String::as_str).collect::<Vec<_>>()
            {
                return Err(reject(
                    "feature_mismatch",
                    format!(
                        "batch has features {names:?}; version {} maps {:?}",
                        batch.version, map.features
                    ),
                ));
            }
            for feature in &batch.features {
                let expected = if map.categorical.contains(&feature.name) {
                    Kind::Categorical
                } else {
                    Kind::Numeric
                };
                if feature.profile.kind() != expected {
                    return Err(reject(
                        "sketch_kind",
                        format!(
                            "feature {:?} is {} but the version expects {}",
                            feature.name,
                            feature.profile.kind().name(),
                            expected.name()
                        ),
                    ));
                }
            }
        }
        Ok((batch, frame.compressed().to_vec()))
    }

    /// Checks and stores a run of frames in one transaction.
    pub fn ingest(&self, messages: &[(String, bytes::Bytes)], now_ms: i64) -> IngestOutcome {
        let mut outcome = IngestOutcome::default();
        let mut windows = Vec::with_capacity(messages.len());
        for (topic, payload) in messages {
            match self.check(topic, payload, now_ms) {
                Ok((batch, compressed)) => windows.push(NewWindow {
                    batch_id: batch.batch_id,
                    device_id: batch.device_id,
                    model: batch.model,
                    version: batch.version,
                    window_start_ms: batch.window_start_ms,
                    window_end_ms: batch.window_end_ms,
                    received: now_ms,
                    requests: batch.requests,
                    errors: batch.errors.values().sum(),
                    spool_dropped: batch.spool_dropped_total,
                    spool_lost: batch.spool_lost_total,
                    batch: compressed,
                    captures: batch.captures,
                }),
                Err(rejection) => {
                    self.metrics.telemetry_rejected(rejection.reason);
                    tracing::warn!(%topic, reason = rejection.reason, message = %rejection.message, "telemetry refused");
                    outcome.rejected.push(rejection);
                }
            }
        }
        if windows.is_empty() {
            return outcome;
        }
        match self.telemetry.insert_windows(&windows) {
            Ok(fresh) => {
                outcome.stored = fresh.iter().filter(|f| **f).count() as u64;
                outcome.duplicates = fresh.len() as u64 - outcome.stored;
            }
            Err(error) => {
                tracing::error!(%error, windows = windows.len(), "cannot store telemetry");
                for _ in &windows {
                    self.metrics.telemetry_rejected("store");
                }
                outcome.rejected.push(reject("store", error.to_string()));
            }
        }
        HubMetrics::add(&self.metrics.telemetry_windows_stored, outcome.stored);
        HubMetrics::add(&self.metrics.telemetry_duplicates, outcome.duplicates);
        outcome
    }

    /// Forgets cached keys and feature maps (after a device re-enrolls or a manifest changes).
    pub fn forget_caches(&self) {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.feature_maps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Most frames written per transaction.
const BATCH_LIMIT: usize = 512;

/// Starts the ingest thread; the returned queue is bounded, so a hub that falls behind slows
/// its reading from the broker (and the broker its publishers) instead of growing memory.
pub fn start_ingest_thread(
    ingest: Arc<TelemetryIngest>,
    capacity: usize,
) -> tokio::sync::mpsc::Sender<(String, bytes::Bytes)> {
    let (queue, mut frames) = tokio::sync::mpsc::channel::<(String, bytes::Bytes)>(capacity);
    std::thread::Builder::new()
        .name("telemetry-ingest".into())
        .spawn(move || {
            while let Some(first) = frames.blocking_recv() {
                let mut run = vec![first];
                while run.len() < BATCH_LIMIT {
                    match frames.try_recv() {
                        Ok(next) => run.push(next),
                        Err(_) => break,
                    }
                }
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                ingest.ingest(&run, now_ms);
            }
        })
        .expect("the OS lets the hub start its telemetry thread");
    queue
}
