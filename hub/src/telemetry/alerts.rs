//! The drift evaluator: every interval, for each model version that sent windows recently,
//! merges its fleet-wide slice over the look-back, compares it with the version's reference,
//! records a `drift_alert` event when the dataset starts drifting and `drift_cleared` when it
//! stops (retraining triggers consume these), and refreshes the drift and health gauges on
//! `/metrics`.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use super::{Against, SliceQuery, Telemetry, TelemetryError};
use crate::metrics::HubMetrics;

pub const DRIFT_ALERT: &str = "drift_alert";
pub const DRIFT_CLEARED: &str = "drift_cleared";

#[derive(Debug, Clone, Copy)]
pub struct EvaluatorSettings {
    pub interval: Duration,
    /// How far back the fleet-wide slice reaches.
    pub lookback: Duration,
}

impl Default for EvaluatorSettings {
    fn default() -> Self {
        EvaluatorSettings {
            interval: Duration::from_secs(60),
            lookback: Duration::from_secs(600),
        }
    }
}

#[derive(Debug)]
pub struct DriftEvaluator {
    pub telemetry: Arc<Telemetry>,
    pub metrics: Arc<HubMetrics>,
    pub settings: EvaluatorSettings,
}

fn label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', " ")
}

impl DriftEvaluator {
    /// One pass; returns the events it recorded as `(kind, model, version)`.
    pub fn evaluate(&self, now_ms: i64) -> Result<Vec<(String, String, u64)>, TelemetryError> {
        let since = now_ms - self.settings.lookback.as_millis() as i64;
        let mut events = Vec::new();
        let mut gauges = String::new();
        let _ = writeln!(
            gauges,
            "# HELP flotilla_model_requests Requests in the look-back window, fleet-wide.\n# TYPE flotilla_model_requests gauge"
        );
        let mut health_lines = Vec::new();
        let mut drift_lines = Vec::new();
        for (model, version) in self.telemetry.store.active_versions(since)? {
            let query = SliceQuery {
                model: model.clone(),
                version: Some(version),
                since_ms: Some(since),
                ..SliceQuery::default()
            };
            let slice = self.telemetry.slice(&query)?;
            let health = slice.health();
            let (m, v) = (label(&model), version);
            health_lines.push(format!(
                "flotilla_model_requests{{model=\"{m}\",version=\"{v}\"}} {}",
                health.requests
            ));
            if let Some(rate) = health.error_rate {
                health_lines.push(format!(
                    "flotilla_model_error_rate{{model=\"{m}\",version=\"{v}\"}} {rate}"
                ));
            }
            for (q, value) in [
                ("0.5", health.latency_ms_p50),
                ("0.9", health.latency_ms_p90),
                ("0.99", health.latency_ms_p99),
            ] {
                if let Some(value) = value {
                    health_lines.push(format!("flotilla_model_latency_ms{{model=\"{m}\",version=\"{v}\",quantile=\"{q}\"}} {value}"));
                }
            }
            let report = match self.telemetry.drift_report(&query, &Against::Reference) {
                Ok(report) => report,
                Err(TelemetryError::NotFound(_)) => continue,
                Err(error) => return Err(error),
            };
            for f in &report.features {
                for (metric, value) in [
                    ("ks", f.ks),
                    ("wasserstein_sigma", f.wasserstein_sigma),
                    ("psi", f.psi),
                    ("js", f.js),
                    ("hellinger", f.hellinger),
                ] {
                    if let Some(value) = value {
                        drift_lines.push(format!(
                            "flotilla_drift_score{{model=\"{m}\",version=\"{v}\",feature=\"{}\",metric=\"{metric}\"}} {value}",
                            label(&f.name)
                        ));
                    }
                }
            }
            if let Some(drift) = report.dataset_drift {
                drift_lines.push(format!(
                    "flotilla_dataset_drift{{model=\"{m}\",version=\"{v}\"}} {}",
                    drift as u8
                ));
            }
            let state = self.telemetry.store.last_event_kind(
                &model,
                version,
                &[DRIFT_ALERT, DRIFT_CLEARED],
            )?;
            let kind = match (report.dataset_drift, state.as_deref()) {
                (Some(true), None | Some(DRIFT_CLEARED)) => Some(DRIFT_ALERT),
                (Some(false), Some(DRIFT_ALERT)) => Some(DRIFT_CLEARED),
                _ => None,
            };
            if let Some(kind) = kind {
                let scores: Vec<serde_json::Value> = report
                    .features
                    .iter()
                    .filter(|f| f.drifted == Some(true))
                    .map(|f| serde_json::json!({"feature": f.name, "wasserstein_sigma": f.wasserstein_sigma, "ks": f.ks, "psi": f.psi, "js": f.js}))
                    .collect();
                let detail = serde_json::json!({
                    "drifted_features": report.drifted_features,
                    "features_judged": report.features.iter().filter(|f| f.drifted.is_some()).count(),
                    "scores": scores,
                    "devices": report.devices,
                    "windows": report.windows,
                    "since_ms": since,
                    "against": "reference",
                });
                self.telemetry.store.add_event(
                    now_ms / 1000,
                    kind,
                    &model,
                    Some(version),
                    &detail,
                )?;
                tracing::warn!(%model, version, kind, drifted = ?report.drifted_features, "drift event");
                events.push((kind.to_owned(), model.clone(), version));
            }
        }
        for line in &health_lines {
            let _ = writeln!(gauges, "{line}");
        }
        let _ = writeln!(
            gauges,
            "# HELP flotilla_drift_score Drift of the fleet-wide look-back slice against the version's reference.\n# TYPE flotilla_drift_score gauge"
        );
        for line in &drift_lines {
            let _ = writeln!(gauges, "{line}");
        }
        *self
            .metrics
            .model_gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = gauges;
        Ok(events)
    }

    /// Runs `evaluate` every interval on the blocking pool.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(self.settings.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let evaluator = self.clone();
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                match tokio::task::spawn_blocking(move || evaluator.evaluate(now_ms)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::error!(%error, "drift evaluation failed"),
                    Err(error) => tracing::error!(%error, "drift evaluation panicked"),
                }
            }
        })
    }
}
