//! The drift evaluator: every interval, for each model version that sent windows recently,
//! merges its fleet-wide slice over the look-back, compares it with the version's reference,
//! records a `drift_alert` event when the dataset starts drifting and `drift_cleared` when it
//! stops (for people and alerting; retraining triggers judge each device themselves), and refreshes the drift and health gauges on
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
    pub clock: flotilla_common::clock::SharedClock,
}

/// The gauge lines of one pass, by family, so each family is contiguous under its HELP.
#[derive(Debug, Default)]
struct Gauges {
    requests: Vec<String>,
    error_rate: Vec<String>,
    latency: Vec<String>,
    drift: Vec<String>,
    dataset: Vec<String>,
}

impl Gauges {
    fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, lines) in [
            (
                "flotilla_model_requests",
                "Requests in the look-back window, fleet-wide, per model version.",
                &self.requests,
            ),
            (
                "flotilla_model_error_rate",
                "Share of those requests that failed.",
                &self.error_rate,
            ),
            (
                "flotilla_model_latency_ms",
                "Request latency quantiles over the look-back window, in milliseconds.",
                &self.latency,
            ),
            (
                "flotilla_drift_score",
                "Drift of the fleet-wide look-back slice against the version's reference, per feature and metric.",
                &self.drift,
            ),
            (
                "flotilla_dataset_drift",
                "1 when at least the dataset share of features drift, else 0.",
                &self.dataset,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for line in lines {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

fn label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', " ")
}

impl DriftEvaluator {
    /// One pass; returns the events it recorded as `(kind, model, version)`. A version whose
    /// evaluation fails is logged and skipped; the others go on.
    pub fn evaluate(&self, now_ms: i64) -> Result<Vec<(String, String, u64)>, TelemetryError> {
        let since = now_ms - self.settings.lookback.as_millis() as i64;
        let mut events = Vec::new();
        let mut gauges = Gauges::default();
        for (model, version) in self.telemetry.store.active_versions(since)? {
            match self.evaluate_version(&model, version, since, now_ms, &mut gauges) {
                Ok(Some(kind)) => events.push((kind.to_owned(), model, version)),
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(%model, version, %error, "drift evaluation of this version failed")
                }
            }
        }
        *self
            .metrics
            .model_gauges
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = gauges.render();
        Ok(events)
    }

    fn evaluate_version(
        &self,
        model: &str,
        version: u64,
        since: i64,
        now_ms: i64,
        gauges: &mut Gauges,
    ) -> Result<Option<&'static str>, TelemetryError> {
        let query = SliceQuery {
            model: model.to_owned(),
            version: Some(version),
            since_ms: Some(since),
            ..SliceQuery::default()
        };
        let slice = self.telemetry.slice(&query)?;
        let health = slice.health();
        let series = format!("model=\"{}\",version=\"{version}\"", label(model));
        gauges.requests.push(format!(
            "flotilla_model_requests{{{series}}} {}",
            health.requests
        ));
        if let Some(rate) = health.error_rate {
            gauges
                .error_rate
                .push(format!("flotilla_model_error_rate{{{series}}} {rate}"));
        }
        for (q, value) in [
            ("0.5", health.latency_ms_p50),
            ("0.9", health.latency_ms_p90),
            ("0.99", health.latency_ms_p99),
        ] {
            if let Some(value) = value {
                gauges.latency.push(format!(
                    "flotilla_model_latency_ms{{{series},quantile=\"{q}\"}} {value}"
                ));
            }
        }
        let report = match self
            .telemetry
            .compare_slice(&query, &slice, &Against::Reference)
        {
            Ok(report) => report,
            Err(TelemetryError::NotFound(_)) => return Ok(None),
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
                    gauges.drift.push(format!(
                        "flotilla_drift_score{{{series},feature=\"{}\",metric=\"{metric}\"}} {value}",
                        label(&f.name)
                    ));
                }
            }
        }
        if let Some(drift) = report.dataset_drift {
            gauges.dataset.push(format!(
                "flotilla_dataset_drift{{{series}}} {}",
                drift as u8
            ));
        }
        let state =
            self.telemetry
                .store
                .last_event_kind(model, version, &[DRIFT_ALERT, DRIFT_CLEARED])?;
        let kind = match (report.dataset_drift, state.as_deref()) {
            (Some(true), None | Some(DRIFT_CLEARED)) => DRIFT_ALERT,
            (Some(false), Some(DRIFT_ALERT)) => DRIFT_CLEARED,
            _ => return Ok(None),
        };
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
        self.telemetry
            .store
            .add_event(now_ms / 1000, kind, model, Some(version), &detail)?;
        tracing::warn!(%model, version, kind, drifted = ?report.drifted_features, "drift event");
        Ok(Some(kind))
    }

    /// Runs `evaluate` every interval on the blocking pool.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        let interval = self.settings.interval;
        crate::periodic::spawn_periodic_blocking("drift evaluation", interval, move || {
            self.evaluate(self.clock.now_ms()).map(|_| ())
        })
    }
}
