//! Taking in telemetry frames: parse, check the sender's signature, decode, check the batch
//! against the model version it names, deduplicate by batch id, store. Runs on its own thread
//! fed by a bounded queue, and writes many windows per transaction.

use flotilla_common::retry::{RetryDecision, RetryPolicy, retry_blocking};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flotilla_common::sketch::{DEVICE_K, Kind, Profile, SCORE_K};
use flotilla_common::telemetry::{FrameError, WindowBatch, open_frame};
use flotilla_proto::control::topics;
use flotilla_proto::telemetry::{FeatureMap, PredictionKind};
use flotilla_proto::trust::{Envelope, ModelManifest, PublicKey};

use crate::metrics::HubMetrics;
use crate::store::{NewWindow, RegistryStore, TelemetryStore};

/// Storing a run of windows: seven attempts, waits from 50 ms doubling to 2 s (the ingest
/// thread waits; the queue in front of it holds what arrives meanwhile).
const STORE_RETRY: RetryPolicy = RetryPolicy {
    base: std::time::Duration::from_millis(50),
    max: std::time::Duration::from_secs(2),
    attempts: Some(7),
};

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
    /// Requests the refused window held, when it was opened (so they can be accounted for).
    pub requests: u64,
}

fn reject(reason: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        message: message.into(),
        requests: 0,
    }
}

impl Rejection {
    fn of_batch(mut self, batch: &WindowBatch) -> Rejection {
        self.requests = batch.requests;
        self
    }
}

/// What one call to `ingest` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestOutcome {
    pub stored: u64,
    pub duplicates: u64,
    pub rejected: Vec<Rejection>,
}

/// How long an enrolled key is used from the cache before the store is read again.
const KEY_CACHE_SECONDS: i64 = 5;

#[derive(Debug)]
pub struct TelemetryIngest {
    telemetry: Arc<TelemetryStore>,
    registry: Arc<dyn RegistryStore>,
    metrics: Arc<HubMetrics>,
    clock: flotilla_common::clock::SharedClock,
    /// Enrolled keys of devices, with when each was read: kept `KEY_CACHE_SECONDS`, so a
    /// revoked device's telemetry is refused within seconds without a store read per frame.
    keys: Mutex<HashMap<String, (PublicKey, i64)>>,
    /// Each known model version's feature map (`None`: the version has none).
    feature_maps: Mutex<HashMap<(String, u64), FeatureMapEntry>>,
}

impl TelemetryIngest {
    pub fn new(
        telemetry: Arc<TelemetryStore>,
        registry: Arc<dyn RegistryStore>,
        metrics: Arc<HubMetrics>,
        clock: flotilla_common::clock::SharedClock,
    ) -> TelemetryIngest {
        TelemetryIngest {
            telemetry,
            registry,
            metrics,
            clock,
            keys: Mutex::new(HashMap::new()),
            feature_maps: Mutex::new(HashMap::new()),
        }
    }

    fn device_key(&self, device_id: &str) -> Result<PublicKey, Rejection> {
        let now = self.clock.now_unix();
        if let Some((key, read_at)) = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device_id)
            && now - read_at < KEY_CACHE_SECONDS
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
        if device.revoked_at.is_some() {
            return Err(reject(
                "revoked_device",
                format!("device {device_id} is revoked"),
            ));
        }
        let key: PublicKey = device.public_key;
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device_id.to_owned(), (key.clone(), now));
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

    /// A profile must be of the kind the version expects and, when numeric, sketched with the
    /// accuracy devices use: one device with another k would make every fleet merge fail.
    fn check_profile(name: &str, profile: &Profile, kind: Kind, k: u16) -> Result<(), Rejection> {
        if profile.kind() != kind {
            return Err(reject(
                "sketch_kind",
                format!(
                    "{name:?} is {} but the version expects {}",
                    profile.kind().name(),
                    kind.name()
                ),
            ));
        }
        if let Profile::Numeric(p) = profile
            && p.k() != k
        {
            return Err(reject(
                "sketch_kind",
                format!("{name:?} is sketched with k={} instead of {k}", p.k()),
            ));
        }
        Ok(())
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
            )
            .of_batch(&batch));
        }
        if batch.window_start_ms > now_ms + MAX_CLOCK_AHEAD_MS
            || batch.window_end_ms < batch.window_start_ms
        {
            return Err(reject(
                "clock",
                "window times are in the future or reversed; check the device clock",
            )
            .of_batch(&batch));
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
                Self::check_profile(&feature.name, &feature.profile, expected, DEVICE_K)?;
            }
            for prediction in &batch.predictions {
                let output = map
                    .predictions
                    .iter()
                    .find(|p| {
                        prediction.name == p.output
                            || prediction
                                .name
                                .strip_prefix(p.output.as_str())
                                .is_some_and(|rest| rest.starts_with('['))
                    })
                    .ok_or_else(|| {
                        reject(
                            "feature_mismatch",
                            format!(
                                "prediction {:?} is not one of the version's outputs {:?}",
                                prediction.name,
                                map.predictions
                                    .iter()
                                    .map(|p| &p.output)
                                    .collect::<Vec<_>>()
                            ),
                        )
                    })?;
                let expected = match output.kind {
                    PredictionKind::Class => Kind::Categorical,
                    PredictionKind::Score => Kind::Numeric,
                };
                Self::check_profile(&prediction.name, &prediction.profile, expected, SCORE_K)?;
            }
        }
        if batch.latency_ms.k() != DEVICE_K {
            return Err(reject(
                "sketch_kind",
                format!(
                    "latency is sketched with k={} instead of {DEVICE_K}",
                    batch.latency_ms.k()
                ),
            ));
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
                    self.metrics
                        .telemetry_rejected(rejection.reason, rejection.requests);
                    tracing::warn!(%topic, reason = rejection.reason, message = %rejection.message, "telemetry refused");
                    outcome.rejected.push(rejection);
                }
            }
        }
        if windows.is_empty() {
            return outcome;
        }
        // A busy or briefly failing database is retried: these windows were acknowledged to
        // their devices already, so giving up loses them.
        let stored = retry_blocking(
            &STORE_RETRY,
            |_| self.telemetry.insert_windows(&windows),
            |error, attempt| {
                if let Some(wait) = attempt.retry_in {
                    tracing::warn!(%error, attempt = attempt.number, retry_in_ms = wait.as_millis() as u64, "cannot store telemetry yet; retrying");
                }
                RetryDecision::Retry
            },
        );
        match stored {
            Ok(fresh) => {
                outcome.stored = fresh.iter().filter(|f| **f).count() as u64;
                outcome.duplicates = fresh.len() as u64 - outcome.stored;
            }
            Err(error) => {
                tracing::error!(%error, windows = windows.len(), "cannot store telemetry");
                for _ in &windows {
                    self.metrics.telemetry_rejected("store", 0);
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

/// Where the MQTT loop hands telemetry frames to the ingest thread. Bounded in frames and in
/// bytes: when either is full, `push` waits, the MQTT loop stops reading from the broker, and
/// the broker holds back its publishers; memory does not grow with a backlog.
#[derive(Debug, Clone)]
pub struct TelemetryQueue {
    sender: tokio::sync::mpsc::Sender<QueuedFrame>,
    budget_kib: Arc<tokio::sync::Semaphore>,
    capacity_kib: u32,
    metrics: Arc<HubMetrics>,
}

type QueuedFrame = (String, bytes::Bytes, tokio::sync::OwnedSemaphorePermit);

impl TelemetryQueue {
    /// Queues a frame; false when the ingest thread has stopped.
    pub async fn push(&self, topic: String, payload: bytes::Bytes) -> bool {
        let kib = (payload.len() as u64).div_ceil(1024).max(1);
        if kib > self.capacity_kib as u64 {
            self.metrics.telemetry_rejected("too_large", 0);
            return true;
        }
        let Ok(permit) = self.budget_kib.clone().acquire_many_owned(kib as u32).await else {
            return false;
        };
        self.sender.send((topic, payload, permit)).await.is_ok()
    }
}

/// Starts the ingest thread behind a queue of at most `frames` frames and `bytes` bytes.
pub fn start_ingest_thread(
    ingest: Arc<TelemetryIngest>,
    frames: usize,
    bytes: u64,
) -> TelemetryQueue {
    let (sender, mut queue) = tokio::sync::mpsc::channel::<QueuedFrame>(frames.max(1));
    let capacity_kib = (bytes / 1024).clamp(1024, u32::MAX as u64 / 2) as u32;
    let metrics = ingest.metrics.clone();
    std::thread::Builder::new()
        .name("telemetry-ingest".into())
        .spawn(move || {
            while let Some(first) = queue.blocking_recv() {
                let mut run = vec![first];
                while run.len() < BATCH_LIMIT {
                    match queue.try_recv() {
                        Ok(next) => run.push(next),
                        Err(_) => break,
                    }
                }
                let now_ms = ingest.clock.now_ms();
                let mut permits = Vec::with_capacity(run.len());
                let messages: Vec<(String, bytes::Bytes)> = run
                    .into_iter()
                    .map(|(topic, payload, permit)| {
                        permits.push(permit);
                        (topic, payload)
                    })
                    .collect();
                ingest.ingest(&messages, now_ms);
                // The bytes budget is given back once the frames are processed, not before.
                drop(permits);
            }
        })
        .expect("the OS lets the hub start its telemetry thread");
    TelemetryQueue {
        sender,
        budget_kib: Arc::new(tokio::sync::Semaphore::new(capacity_kib as usize)),
        capacity_kib,
        metrics,
    }
}
