//! On-device telemetry (docs/drift.md): the inference path records into sharded window
//! accumulators; every window (default 60 s, aligned to the clock) each model version's
//! window is sealed into a signed, compressed batch and written to the spool; the uploader
//! drains the spool over MQTT QoS 1.

mod recorder;
mod spool;
mod uploader;
mod window;

use flotilla_common::clock::SharedClock;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_common::signing::SigningKey;
use flotilla_common::telemetry::{BatchId, WindowBatch, seal_frame};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::{Notify, mpsc};

pub use recorder::Recorder;
pub use spool::{Spool, SpoolCounters};
pub use uploader::DrainSettings;
pub use window::{CaptureLimits, FeatureRows, WindowAccumulator, extract_features};

use crate::transport::mqtt::AgentMqtt;

/// `[telemetry]` in agent.toml.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Window length in seconds.
    #[serde(default = "default_window_seconds")]
    pub window_seconds: u64,
    /// The spool's size limit; the oldest batches are dropped (and counted) beyond it.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Spooled batches sent per second at most when draining a backlog.
    #[serde(default = "default_drain_per_second")]
    pub drain_per_second: f64,
    /// Longest random wait after a reconnect before draining, in seconds.
    #[serde(default = "default_reconnect_jitter_seconds")]
    pub reconnect_jitter_seconds: f64,
    /// Windows close on the clock, so a whole fleet seals one at the same moment; each
    /// device sends a new window after its own fixed random delay below this many seconds,
    /// spreading the fleet's uploads over that span (0: at once).
    #[serde(default)]
    pub upload_spread_seconds: f64,
    /// Data capture per model name (off unless listed).
    #[serde(default)]
    pub capture: HashMap<String, CaptureConfig>,
}

/// `[telemetry.capture.MODEL]`: data capture for one model.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// Requests sampled per minute at most.
    /// Example: 10
    pub per_minute: u32,
    /// A request bigger than this (inputs and outputs as JSON) is not captured.
    /// Example: 16384
    #[serde(default = "default_max_sample_bytes")]
    pub max_sample_bytes: usize,
}

fn default_window_seconds() -> u64 {
    60
}
fn default_spool_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_drain_per_second() -> f64 {
    20.0
}
fn default_reconnect_jitter_seconds() -> f64 {
    2.0
}
fn default_max_sample_bytes() -> usize {
    16 * 1024
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            window_seconds: default_window_seconds(),
            spool_max_bytes: default_spool_max_bytes(),
            drain_per_second: default_drain_per_second(),
            reconnect_jitter_seconds: default_reconnect_jitter_seconds(),
            upload_spread_seconds: 0.0,
            capture: HashMap::new(),
        }
    }
}

/// Adds one request to its model version's window: features and predictions when it
/// succeeded (`Ok((features, outputs))`), its error kind when it failed; latency either way.
pub fn record_request(
    recorder: &Recorder,
    model: &flotilla_runtime::LoadedModel,
    outcome: Result<(Option<FeatureRows>, Vec<flotilla_runtime::NamedTensor>), &'static str>,
    elapsed: Duration,
) {
    let latency_ms = elapsed.as_secs_f32() * 1000.0;
    let capture = recorder.capture_limits(&model.name);
    recorder.record(
        &model.name,
        model.version,
        model.feature_map.as_ref(),
        |window| match outcome {
            Ok((features, outputs)) => window.record_success(
                features.as_ref(),
                &outputs,
                latency_ms,
                capture,
                recorder.clock.now_ms(),
            ),
            Err(kind) => window.record_error(kind, latency_ms),
        },
    );
}

/// What the local `/metrics` shows about telemetry.
#[derive(Debug)]
pub struct TelemetryStatus {
    pub spool: Arc<Spool>,
    pub windows_sealed: AtomicU64,
    pub windows_acknowledged: AtomicU64,
}

impl TelemetryStatus {
    /// Prometheus text for the agent's `/metrics`.
    pub fn render(&self) -> String {
        let counters = self.spool.counters();
        let (backlog, bytes) = self.spool.backlog();
        let mut out = String::new();
        for (name, kind, help, value) in [
            (
                "flotilla_agent_telemetry_windows_sealed_total",
                "counter",
                "Telemetry windows sealed into the spool.",
                self.windows_sealed.load(Ordering::Relaxed),
            ),
            (
                "flotilla_agent_telemetry_windows_acknowledged_total",
                "counter",
                "Telemetry windows the broker acknowledged (then deleted from the spool).",
                self.windows_acknowledged.load(Ordering::Relaxed),
            ),
            (
                "flotilla_agent_telemetry_spool_dropped_total",
                "counter",
                "Windows dropped because the spool was full.",
                counters.dropped,
            ),
            (
                "flotilla_agent_telemetry_spool_lost_total",
                "counter",
                "Windows lost with spool files found corrupt.",
                counters.lost,
            ),
            (
                "flotilla_agent_telemetry_spool_backlog",
                "gauge",
                "Windows waiting in the spool.",
                backlog,
            ),
            (
                "flotilla_agent_telemetry_spool_bytes",
                "gauge",
                "Bytes waiting in the spool.",
                bytes,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }
}

/// The embedded broker takes payloads up to 1 MiB: sealed batches stay below, with headroom.
const MAX_FRAME_BYTES: usize = 960 * 1024;
/// Captured samples per batch, in bytes of JSON, at most (they are the bulky part).
const MAX_CAPTURE_BYTES: usize = 256 * 1024;

/// Keeps the first samples that fit in `budget` bytes.
fn keep_within(captures: &mut Vec<flotilla_common::telemetry::CaptureSample>, budget: usize) {
    let mut used = 0;
    let keep = captures
        .iter()
        .take_while(|c| {
            used += c.inputs.len() + c.outputs.len();
            used <= budget
        })
        .count();
    captures.truncate(keep);
}

/// Closes windows into the spool. Shared by the closer task and `flush` at shutdown.
#[derive(Debug)]
struct WindowCloser {
    device_id: String,
    key: Arc<SigningKey>,
    recorder: Arc<Recorder>,
    spool: Arc<Spool>,
    spooled: Arc<Notify>,
    capture: HashMap<String, CaptureLimits>,
    status: Arc<TelemetryStatus>,
    /// Held while a window is sealed; true once the core is halted, after which nothing is
    /// sealed (a seal still queued when the core was killed must not run after it).
    halted: std::sync::Mutex<bool>,
}

impl WindowCloser {
    /// A random 128-bit id; if the OS has no randomness to give, a hash of what makes the
    /// batch unique on this device, so two batches never share an id.
    fn batch_id(&self, model: &str, version: u64, start_ms: i64) -> BatchId {
        let mut id = [0u8; 16];
        if getrandom::fill(&mut id).is_ok() {
            return id;
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let digest = sha2::Sha256::digest(
            format!(
                "{}\0{model}\0{version}\0{start_ms}\0{}\0{}",
                self.device_id,
                self.recorder.clock.now_ms(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            )
            .as_bytes(),
        );
        id.copy_from_slice(&digest[..16]);
        id
    }

    /// Seals what was recorded since the last close as the window `[start, end)`.
    fn close(&self, start_ms: i64, end_ms: i64) -> usize {
        let halted = self.halted.lock().unwrap_or_else(|e| e.into_inner());
        if *halted {
            return 0;
        }
        let counters = self.spool.counters();
        let mut sealed = 0;
        for (model, version, window) in self.recorder.take() {
            if window.requests == 0 {
                continue;
            }
            let errors = window
                .errors
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect();
            let (requests, latency_ms) = (window.requests, window.latency_ms.clone());
            let mut captures = window.captures.clone();
            if let Some(limits) = self.capture.get(&model) {
                captures.truncate(limits.per_window);
            }
            keep_within(&mut captures, MAX_CAPTURE_BYTES);
            let (features, predictions) = window.into_profiles();
            let batch_id = self.batch_id(&model, version, start_ms);
            let mut batch = WindowBatch {
                batch_id,
                device_id: self.device_id.clone(),
                model,
                version,
                window_start_ms: start_ms,
                window_end_ms: end_ms,
                requests,
                errors,
                latency_ms,
                features,
                predictions,
                spool_dropped_total: counters.dropped,
                spool_lost_total: counters.lost,
                captures,
            };
            let mut frame = seal_frame(&batch, &self.key);
            if frame.len() > MAX_FRAME_BYTES && !batch.captures.is_empty() {
                tracing::warn!(
                    bytes = frame.len(),
                    "telemetry batch too big for the broker; sent without its captured samples"
                );
                batch.captures.clear();
                frame = seal_frame(&batch, &self.key);
            }
            if frame.len() > MAX_FRAME_BYTES {
                tracing::error!(bytes = frame.len(), model = %batch.model, "telemetry batch too big for the broker even without samples; dropped and counted");
                self.spool.count_dropped(1, batch.requests);
                continue;
            }
            self.spool.push(&frame, batch.requests);
            self.status.windows_sealed.fetch_add(1, Ordering::Relaxed);
            sealed += 1;
        }
        if sealed > 0 {
            self.spooled.notify_one();
        }
        sealed
    }
}

/// The running telemetry pipeline of one agent core.
#[derive(Debug)]
pub struct Telemetry {
    pub recorder: Arc<Recorder>,
    pub spool: Arc<Spool>,
    pub status: Arc<TelemetryStatus>,
    closer: Arc<WindowCloser>,
    window: Duration,
    window_start_ms: Arc<std::sync::atomic::AtomicI64>,
    /// The device's clock: windows close on it and carry its times.
    clock: SharedClock,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Telemetry {
    /// Opens the spool in `state_dir` and returns the recorder for the inference path; call
    /// `start` once MQTT is up.
    pub fn open(
        config: &TelemetryConfig,
        state_dir: &Path,
        device_id: &str,
        key: Arc<SigningKey>,
        clock: SharedClock,
    ) -> Telemetry {
        let window = Duration::from_secs(config.window_seconds.max(1));
        let capture: HashMap<String, CaptureLimits> = config
            .capture
            .iter()
            .map(|(model, c)| {
                let per_window = (c.per_minute as u64 * window.as_secs()).div_ceil(60) as usize;
                (
                    model.clone(),
                    CaptureLimits {
                        per_window,
                        max_sample_bytes: c.max_sample_bytes,
                    },
                )
            })
            .collect();
        let recorder = Arc::new(Recorder::new(capture.clone(), clock.clone()));
        let spool = Arc::new(Spool::open(
            &state_dir.join("telemetry-spool.db"),
            config.spool_max_bytes,
        ));
        let status = Arc::new(TelemetryStatus {
            spool: spool.clone(),
            windows_sealed: AtomicU64::new(0),
            windows_acknowledged: AtomicU64::new(0),
        });
        let closer = Arc::new(WindowCloser {
            device_id: device_id.to_owned(),
            key,
            recorder: recorder.clone(),
            spool: spool.clone(),
            spooled: Arc::new(Notify::new()),
            capture,
            status: status.clone(),
            halted: std::sync::Mutex::new(false),
        });
        Telemetry {
            recorder,
            spool,
            status,
            closer,
            window,
            window_start_ms: Arc::new(std::sync::atomic::AtomicI64::new(clock.now_ms())),
            clock,
            tasks: Vec::new(),
        }
    }

    /// Starts closing windows on the clock and draining the spool. `acks` is the channel
    /// given to `AgentMqtt::start`.
    pub fn start(
        &mut self,
        mqtt: AgentMqtt,
        acks: mpsc::UnboundedReceiver<i64>,
        config: &TelemetryConfig,
    ) {
        let (closer, window, start, clock) = (
            self.closer.clone(),
            self.window,
            self.window_start_ms.clone(),
            self.clock.clone(),
        );
        self.tasks.push(tokio::spawn(async move {
            let length = window.as_millis() as i64;
            loop {
                let now = clock.now_ms();
                let boundary = (now / length + 1) * length;
                tokio::time::sleep(Duration::from_millis((boundary - now).max(1) as u64)).await;
                // A timer that fires early, or a clock stepped back, must not close an empty
                // or reversed window: wait for the boundary again.
                if clock.now_ms() < boundary {
                    continue;
                }
                let begun = start.swap(boundary, std::sync::atomic::Ordering::SeqCst);
                let closer = closer.clone();
                let _ = tokio::task::spawn_blocking(move || closer.close(begun, boundary)).await;
            }
        }));
        let settings = DrainSettings {
            per_second: config.drain_per_second,
            reconnect_jitter: Duration::from_secs_f64(config.reconnect_jitter_seconds.max(0.0)),
            // Drawn once: the device keeps its place in the spread window after window.
            upload_delay: Duration::from_secs_f64(
                // A value that is not a number of seconds (NaN) means no spread.
                (if config.upload_spread_seconds.is_finite() {
                    config.upload_spread_seconds
                } else {
                    0.0
                })
                .clamp(0.0, config.window_seconds as f64)
                    * flotilla_common::backoff::random_jitter(),
            ),
        };
        self.tasks.push(tokio::spawn(uploader::run(
            self.status.clone(),
            mqtt,
            acks,
            self.closer.spooled.clone(),
            settings,
        )));
    }

    /// Seals the open window now (at shutdown, so its requests are not lost).
    pub fn flush(&self) -> usize {
        let now = self.clock.now_ms();
        let begun = self
            .window_start_ms
            .swap(now, std::sync::atomic::Ordering::SeqCst);
        self.closer.close(begun, now)
    }

    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Stops as `kill -9` would: a window being sealed right now finishes (it is in the
    /// spool, as a committed SQLite write would be), and nothing is sealed afterwards, so
    /// what is left in the recorder is exactly what the crash lost. Blocks while a seal runs.
    pub fn halt(&self) {
        self.stop();
        *self.closer.halted.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_settings_come_from_the_config() {
        let config: TelemetryConfig =
            toml::from_str("window_seconds = 2\n[capture.iris]\nper_minute = 60\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let telemetry = Telemetry::open(
            &config,
            dir.path(),
            "dev-1",
            Arc::new(SigningKey::generate().unwrap()),
            flotilla_common::clock::SystemClock::shared(),
        );
        let limits = telemetry.recorder.capture_limits("iris").unwrap();
        assert_eq!((limits.per_window, limits.max_sample_bytes), (2, 16 * 1024));
        assert!(telemetry.recorder.capture_limits("other").is_none());
    }
}
