//! What a run found: the JSON report and its short human summary.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct TimelineEvent {
    pub at_seconds: f64,
    pub what: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Installs {
    /// Devices reporting the deployed version.
    pub installed: usize,
    /// Devices whose last outcome for the model is a failure.
    pub failed: usize,
    /// Failed devices by step and reason.
    pub failures: std::collections::BTreeMap<String, usize>,
    pub pending: usize,
    /// From the first deploy to every targeted device serving it.
    pub time_to_converge_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TelemetryCounts {
    /// Windows the devices sealed into their spools.
    pub sealed: u64,
    /// Windows the broker acknowledged (then deleted from the spools).
    pub acknowledged: u64,
    /// Windows the hub stored (each batch id once).
    pub received: u64,
    /// Deliveries the hub recognised as repeats.
    pub duplicates: u64,
    /// Windows dropped on devices (full spool) and lost (corrupt spool).
    pub dropped: u64,
    pub lost: u64,
    /// Windows the hub refused, by reason. Only `clock` (a skewed device clock, which a
    /// scenario forces) is an expected refusal; any other leaves the run unreconciled.
    pub refused: BTreeMap<String, u64>,
    /// sealed == received + refused for the clock + dropped + lost, and nothing waits in a
    /// spool.
    pub reconciled: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Requests {
    /// Answered by the model on the device.
    pub served: u64,
    /// Ran and failed (or were refused as busy).
    pub failed: u64,
    /// Sent before the model was installed (not part of any window).
    pub not_ready: u64,
    /// Not sent because the device was crashed at the time.
    pub while_down: u64,
    /// Served, then lost with a crashed core's open window (a crash cannot report them).
    pub lost_in_crashes: u64,
    /// Served, in windows a full spool dropped (counted on the device).
    pub dropped_with_windows: u64,
    /// Served, in windows the hub refused because the device clock was far off.
    pub refused_with_windows: u64,
    /// Requests in the windows the hub holds.
    pub hub_counted: u64,
    pub reconciled: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DriftDetection {
    pub injected_at_seconds: Option<f64>,
    pub alert_at_seconds: Option<f64>,
    pub latency_seconds: Option<f64>,
    pub drifted_features: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    pub devices: usize,
    /// Processes the fleet ran in.
    pub processes: usize,
    /// The fleet's processes together: resident memory at the end, the sum of their peaks,
    /// memory the devices added at start, CPU seconds.
    pub fleet_rss_mib: f64,
    pub fleet_peak_rss_mib: f64,
    pub rss_per_device_kib: f64,
    pub fleet_cpu_seconds: f64,
    /// The hub's process, when it is not also the fleet's.
    pub hub: Option<HubProcess>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HubProcess {
    pub cpu_seconds: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    pub open_fds: u64,
}

/// One second of the run, for the timeline chart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub at_seconds: f64,
    pub online: usize,
    pub installed: usize,
    pub requests: u64,
    pub windows_sealed: u64,
    /// Wasserstein/σ of the fleet-wide look-back slice against the reference, per feature.
    pub drift: std::collections::BTreeMap<String, f64>,
}

/// A rollout the scenario started, as the hub's controller ran it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RolloutReport {
    pub id: String,
    pub version: u64,
    pub phase: String,
    pub targets: u64,
    pub told: u64,
    pub installed: u64,
    pub failed: u64,
    /// Told devices back on their previous version.
    pub restored: u64,
    pub reason: Option<String>,
    pub started_at_seconds: f64,
    pub completed_at_seconds: Option<f64>,
    /// When fleet-sim saw the hub's `rollout.failed` and `rollout.rolled_back` events (every
    /// told device back on its previous version), within its one-second look.
    pub failed_at_seconds: Option<f64>,
    pub restored_at_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub devices: usize,
    pub duration_seconds: f64,
    pub timeline: Vec<TimelineEvent>,
    pub installs: Installs,
    pub telemetry: TelemetryCounts,
    pub requests: Requests,
    pub drift: DriftDetection,
    pub resources: Resources,
    pub rollouts: Vec<RolloutReport>,
    pub series: Vec<Sample>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut out = format!(
            "scenario {}: {} devices, {:.0} s\n",
            self.scenario, self.devices, self.duration_seconds
        );
        out.push_str(&format!(
            "installs: {} installed, {} failed, {} pending; converged in {}\n",
            self.installs.installed,
            self.installs.failed,
            self.installs.pending,
            self.installs
                .time_to_converge_seconds
                .map_or("(not converged)".to_owned(), |s| format!("{s:.1} s"))
        ));
        for (why, n) in &self.installs.failures {
            out.push_str(&format!("  {n} failed at {why}\n"));
        }
        let t = &self.telemetry;
        out.push_str(&format!(
            "telemetry windows: {} sealed, {} acknowledged, {} received ({} duplicate deliveries), {} dropped, {} lost{}: {}\n",
            t.sealed,
            t.acknowledged,
            t.received,
            t.duplicates,
            t.dropped,
            t.lost,
            t.refused
                .iter()
                .map(|(why, n)| format!(", {n} refused by the hub ({why})"))
                .collect::<String>(),
            if t.reconciled { "reconciled" } else { "NOT RECONCILED" }
        ));
        let r = &self.requests;
        out.push_str(&format!(
            "requests: {} served, {} failed, {} before install, {} lost in crashes, {} in dropped windows, {} in windows refused for the clock; the hub counted {}: {}\n",
            r.served,
            r.failed,
            r.not_ready,
            r.lost_in_crashes,
            r.dropped_with_windows,
            r.refused_with_windows,
            r.hub_counted,
            if r.reconciled {
                "reconciled"
            } else {
                "NOT RECONCILED"
            }
        ));
        if let Some(injected) = self.drift.injected_at_seconds {
            out.push_str(&match self.drift.latency_seconds {
                Some(latency) => format!(
                    "drift injected at {injected:.0} s, alert after {latency:.1} s: {}\n",
                    self.drift.drifted_features.join(", ")
                ),
                None => format!("drift injected at {injected:.0} s: NO ALERT\n"),
            });
        }
        for r in &self.rollouts {
            out.push_str(&format!(
                "rollout {} (version {}): {}; {} of {} told, {} installed, {} failed, {} back on the previous version{}{}\n",
                r.id,
                r.version,
                r.phase,
                r.told,
                r.targets,
                r.installed,
                r.failed,
                r.restored,
                match (r.failed_at_seconds, r.restored_at_seconds) {
                    (Some(f), Some(b)) => format!("; all back {:.1} s after the failure", b - f),
                    _ => String::new(),
                },
                r.reason
                    .as_ref()
                    .map(|w| format!("\n  {w}"))
                    .unwrap_or_default()
            ));
        }
        let r = &self.resources;
        out.push_str(&format!(
            "fleet: {} process(es), {:.0} MiB RSS (peak {:.0} MiB, {:.0} KiB per device), {:.1} CPU seconds\n",
            r.processes, r.fleet_rss_mib, r.fleet_peak_rss_mib, r.rss_per_device_kib, r.fleet_cpu_seconds
        ));
        match &r.hub {
            Some(hub) => out.push_str(&format!(
                "hub: {:.1} CPU seconds, {:.0} MiB RSS (peak {:.0} MiB), {} open files\n",
                hub.cpu_seconds, hub.rss_mib, hub.peak_rss_mib, hub.open_fds
            )),
            None => out.push_str("hub: in the fleet's process (its figures are included above)\n"),
        }
        out
    }
}
