//! Every Prometheus metric the agent exports, defined in this one place, and their text
//! rendering for `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Latency histogram bucket upper bounds, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Why a request failed, as the `kind` label of the error counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    TooLarge,
    Busy,
    InferenceFailed,
}

impl ErrorKind {
    const ALL: [ErrorKind; 5] = [
        ErrorKind::BadRequest,
        ErrorKind::NotFound,
        ErrorKind::TooLarge,
        ErrorKind::Busy,
        ErrorKind::InferenceFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Busy => "busy",
            ErrorKind::InferenceFailed => "inference_failed",
        }
    }
}

/// Counters of one model version. Requests that fail before a model version is known (unknown
/// model, unreadable body) are counted under empty labels.
#[derive(Debug, Default)]
struct ModelSeries {
    requests: AtomicU64,
    errors: [AtomicU64; 5],
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_nanos: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, String), Arc<ModelSeries>>>,
    in_flight: AtomicI64,
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    fn series(&self, model: &str, version: &str) -> Arc<ModelSeries> {
        let mut series = self.series.lock().expect("metrics lock is never poisoned");
        if let Some(found) = series.get(&(model.to_owned(), version.to_owned())) {
            return found.clone();
        }
        series
            .entry((model.to_owned(), version.to_owned()))
            .or_default()
            .clone()
    }

    pub fn start_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Records one finished inference request: counted, timed, and its error if any.
    pub fn record(&self, model: &str, version: &str, elapsed: Duration, error: Option<ErrorKind>) {
        let series = self.series(model, version);
        series.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(kind) = error {
            let index = ErrorKind::ALL
                .iter()
                .position(|k| *k == kind)
                .expect("every kind is in ALL");
            series.errors[index].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            series.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        series.latency_count.fetch_add(1, Ordering::Relaxed);
        series
            .latency_sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let series = self
            .series
            .lock()
            .expect("metrics lock is never poisoned")
            .clone();
        let mut out = String::new();
        let label = |model: &str, version: &str| {
            format!(
                "model=\"{}\",version=\"{}\"",
                escape(model),
                escape(version)
            )
        };
        out.push_str("# HELP flotilla_inference_in_flight Inference requests being processed now.\n# TYPE flotilla_inference_in_flight gauge\n");
        let _ = writeln!(
            out,
            "flotilla_inference_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out.push_str("# HELP flotilla_inference_requests_total Inference requests received, by model and version.\n# TYPE flotilla_inference_requests_total counter\n");
        for ((model, version), s) in &series {
            let _ = writeln!(
                out,
                "flotilla_inference_requests_total{{{}}} {}",
                label(model, version),
                s.requests.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP flotilla_inference_errors_total Inference requests that failed, by model, version and kind.\n# TYPE flotilla_inference_errors_total counter\n");
        for ((model, version), s) in &series {
            for (kind, count) in ErrorKind::ALL.iter().zip(&s.errors) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "flotilla_inference_errors_total{{{},kind=\"{}\"}} {count}",
                        label(model, version),
                        kind.label()
                    );
                }
            }
        }
        out.push_str("# HELP flotilla_inference_duration_seconds Time to answer successful inference requests.\n# TYPE flotilla_inference_duration_seconds histogram\n");
        for ((model, version), s) in &series {
            let labels = label(model, version);
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(&s.buckets) {
                cumulative += count.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "flotilla_inference_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = s.latency_count.load(Ordering::Relaxed);
            let sum = s.latency_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "flotilla_inference_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "flotilla_inference_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "flotilla_inference_duration_seconds_count{{{labels}}} {count}"
            );
        }
        out
    }
}

/// The `flotilla_inference_waiting` gauge: requests waiting for a free session, per model
/// version (read from the repository when scraped).
pub fn render_waiting(rows: &[(String, u64, usize)]) -> String {
    let mut out = String::from(
        "# HELP flotilla_inference_waiting Requests waiting for a free session.\n# TYPE flotilla_inference_waiting gauge\n",
    );
    for (model, version, waiting) in rows {
        let _ = writeln!(
            out,
            "flotilla_inference_waiting{{model=\"{}\",version=\"{version}\"}} {waiting}",
            escape(model)
        );
    }
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_errors_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.record("iris", "1", Duration::from_micros(300), None);
        metrics.record("iris", "1", Duration::from_millis(3), None);
        metrics.record("iris", "1", Duration::ZERO, Some(ErrorKind::BadRequest));
        let text = metrics.render();
        assert!(
            text.contains("flotilla_inference_requests_total{model=\"iris\",version=\"1\"} 3"),
            "{text}"
        );
        assert!(text.contains("flotilla_inference_errors_total{model=\"iris\",version=\"1\",kind=\"bad_request\"} 1"), "{text}");
        assert!(text.contains("le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.005\"} 2\n"), "{text}");
        assert!(
            text.contains(
                "flotilla_inference_duration_seconds_count{model=\"iris\",version=\"1\"} 2"
            ),
            "{text}"
        );
        let guard = metrics.start_request();
        assert!(
            metrics
                .render()
                .contains("flotilla_inference_in_flight 1\n")
        );
        drop(guard);
        assert!(
            metrics
                .render()
                .contains("flotilla_inference_in_flight 0\n")
        );
    }
}
