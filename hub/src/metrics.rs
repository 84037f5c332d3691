//! Every Prometheus metric the hub exports, defined in this one place, and their rendering
//! for `GET /metrics`. Counters live here; gauges about the fleet are read from the store
//! when scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::RegistryStore;

#[derive(Debug, Default)]
pub struct HubMetrics {
    pub pushes: AtomicU64,
    pub deployments: AtomicU64,
    pub enrollments: AtomicU64,
    pub enrollments_refused: AtomicU64,
    pub device_messages_accepted: AtomicU64,
    pub device_messages_rejected: AtomicU64,
    pub artifact_bytes_served: AtomicU64,
    pub telemetry_windows_stored: AtomicU64,
    pub telemetry_duplicates: AtomicU64,
    /// Telemetry batches refused, by reason.
    pub telemetry_rejected: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Requests in those batches, by reason (when the batch could be opened).
    pub telemetry_rejected_requests:
        std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Drift scores and health figures of active model versions, in exposition format,
    /// replaced whole by the drift evaluator after each pass.
    pub model_gauges: std::sync::Mutex<String>,
    /// The admin API's connection cap, once the API listens.
    pub api_connections:
        std::sync::OnceLock<std::sync::Arc<flotilla_common::connection_cap::ConnectionCap>>,
}

impl HubMetrics {
    pub fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn telemetry_rejected(&self, reason: &'static str, requests: u64) {
        *self
            .telemetry_rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_insert(0) += 1;
        *self
            .telemetry_rejected_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_insert(0) += requests;
    }

    /// Requests in refused batches so far, by reason.
    pub fn telemetry_rejected_requests(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.telemetry_rejected_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Telemetry refusals so far, by reason.
    pub fn telemetry_rejections(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.telemetry_rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The Prometheus text format; fleet gauges come from `store`.
    pub fn render(&self, store: &dyn RegistryStore) -> String {
        let mut out = String::new();
        let counters = [
            (
                "flotilla_hub_pushes_total",
                "Model versions pushed (including idempotent repeats).",
                &self.pushes,
            ),
            (
                "flotilla_hub_deployments_total",
                "Deployments made.",
                &self.deployments,
            ),
            (
                "flotilla_hub_enrollments_total",
                "Devices enrolled.",
                &self.enrollments,
            ),
            (
                "flotilla_hub_enrollments_refused_total",
                "Enrollment attempts refused (bad, used or expired tokens).",
                &self.enrollments_refused,
            ),
            (
                "flotilla_hub_device_messages_accepted_total",
                "Device reports and status messages verified and stored.",
                &self.device_messages_accepted,
            ),
            (
                "flotilla_hub_device_messages_rejected_total",
                "Device messages refused (bad signature, unknown device, malformed).",
                &self.device_messages_rejected,
            ),
            (
                "flotilla_hub_artifact_bytes_served_total",
                "Artifact bytes sent to devices over HTTP.",
                &self.artifact_bytes_served,
            ),
            (
                "flotilla_hub_telemetry_windows_stored_total",
                "Telemetry windows verified, decoded and stored.",
                &self.telemetry_windows_stored,
            ),
            (
                "flotilla_hub_telemetry_duplicates_total",
                "Telemetry batches delivered again (same batch id), counted once.",
                &self.telemetry_duplicates,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP flotilla_hub_telemetry_rejected_total Telemetry batches refused, by reason.\n# TYPE flotilla_hub_telemetry_rejected_total counter"
        );
        for (reason, n) in self
            .telemetry_rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "flotilla_hub_telemetry_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP flotilla_hub_telemetry_rejected_requests_total Requests in refused telemetry batches, by reason.\n# TYPE flotilla_hub_telemetry_rejected_requests_total counter"
        );
        for (reason, n) in self.telemetry_rejected_requests().iter() {
            let _ = writeln!(
                out,
                "flotilla_hub_telemetry_rejected_requests_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str(&self.model_gauges.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(cap) = self.api_connections.get() {
            out.push_str(&cap.exposition("flotilla_hub_api"));
        }
        if let Ok(devices) = store.devices() {
            let online = devices.iter().filter(|d| d.online).count();
            let _ = writeln!(
                out,
                "# HELP flotilla_hub_devices Enrolled devices by connection state.\n# TYPE flotilla_hub_devices gauge"
            );
            let _ = writeln!(
                out,
                "flotilla_hub_devices{{state=\"online\"}} {online}\nflotilla_hub_devices{{state=\"offline\"}} {}",
                devices.len() - online
            );
        }
        if let Ok(models) = store.models() {
            let _ = writeln!(
                out,
                "# HELP flotilla_hub_models Models in the registry.\n# TYPE flotilla_hub_models gauge\nflotilla_hub_models {}",
                models.len()
            );
        }
        out.push_str(&process_metrics());
        out
    }
}

/// The standard Prometheus process metrics (CPU seconds, resident and peak resident memory,
/// open file descriptors), read from /proc: what an admin needs to see the hub's own cost.
fn process_metrics() -> String {
    let mut out = String::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            // USER_HZ is 100 on every Linux this runs on.
            Some(ticks / 100.0)
        });
    if let Some(cpu) = cpu {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time spent.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}"
        );
    }
    for (name, field, help) in [
        (
            "process_resident_memory_bytes",
            "VmRSS:",
            "Resident memory.",
        ),
        (
            "process_resident_memory_peak_bytes",
            "VmHWM:",
            "Peak resident memory.",
        ),
    ] {
        if let Some(value) = kib(field) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value * 1024
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}",
            entries.count()
        );
    }
    out
}
