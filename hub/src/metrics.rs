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
}

impl HubMetrics {
    pub fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
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
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
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
        out
    }
}
