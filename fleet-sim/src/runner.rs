//! Coordinates a run: a hub (embedded or external), the fleet (in this process or spread
//! over worker processes, see fleet.rs and worker.rs), the operator's timeline, progress;
//! then waits for telemetry to settle and reconciles what the devices did with what the hub
//! holds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::Context;
use flotilla_api::AdminClient;
use flotilla_api::devices::DeployRequest;
use flotilla_api::models::PushRequest;
use flotilla_api::rollouts::RolloutSpec;
use flotilla_api::telemetry::{EventQuery, SliceParams};
use flotilla_proto::control::InstallState;

use crate::fleet::{Fleet, FleetSpec, FleetStatus};
use crate::report::*;
use crate::scenario::Scenario;
use crate::traffic::Dataset;
use crate::worker::{FleetPart, WorkerProcess};
use flotilla_testkit::{TestHub, admin_client};

/// Which hub the fleet talks to.
#[derive(Debug, Clone)]
pub enum HubTarget {
    /// A hub started in this process.
    Embedded,
    /// A running hub: its API URL, an operator token, and its broker as devices reach it.
    External {
        url: String,
        token: String,
        broker: std::net::SocketAddr,
        /// Its CA certificate (PEM), for an https hub.
        ca_pem: Option<String>,
    },
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub target: HubTarget,
    /// Processes for the fleet, overriding the scenario's `processes`.
    pub processes: Option<usize>,
    /// The `flotilla-sim` binary that runs workers (default: this program).
    pub worker_exe: Option<PathBuf>,
}

impl RunOptions {
    pub fn embedded() -> RunOptions {
        RunOptions {
            target: HubTarget::Embedded,
            processes: None,
            worker_exe: None,
        }
    }
}

/// Runs `scenario` to the end and reports. `progress` gets a line every second or so.
pub async fn run(
    scenario: &Scenario,
    options: RunOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Report> {
    let dataset = Dataset::read(scenario.dataset_path())?;
    let (embedded, url, token, broker, ca_pem) = match options.target {
        HubTarget::Embedded => {
            let hub = TestHub::start(1, scenario.drift_lookback_seconds).await?;
            let (url, token, broker, ca_pem) = (
                hub.hub.url.clone(),
                hub.operator_token.clone(),
                hub.broker,
                Some(hub.ca_pem()),
            );
            (Some(hub), url, token, broker, ca_pem)
        }
        HubTarget::External {
            url,
            token,
            broker,
            ca_pem,
        } => (None, url, token, broker, ca_pem),
    };
    let operator = admin_client(&url, Some(token.clone()), ca_pem.as_deref())?;
    let mut report = Report {
        scenario: scenario.name.clone(),
        devices: scenario.device_count(),
        duration_seconds: scenario.duration_seconds,
        ..Report::default()
    };
    let clock = Instant::now();
    let timeline = |what: String, report: &mut Report| {
        report.timeline.push(TimelineEvent {
            at_seconds: clock.elapsed().as_secs_f64(),
            what,
        });
    };

    // The model and its reference.
    let mut push = PushRequest::default();
    let reference = match &scenario.model.reference {
        Some(file) => {
            let (names, encoded) = flotilla_common::telemetry::reference_from_file(file, &[])?;
            push.feature_names = Some(names);
            Some(encoded)
        }
        None => None,
    };
    let bytes = std::fs::read(&scenario.model.file)
        .with_context(|| format!("cannot read {}", scenario.model.file.display()))?;
    let pushed = operator
        .push(&scenario.model.name, bytes.into(), &push)
        .await?;
    let version = pushed.version;
    if let Some(encoded) = reference {
        operator
            .put_reference(&scenario.model.name, &version.to_string(), encoded.into())
            .await?;
    }
    let record = operator
        .version(&scenario.model.name, &version.to_string())
        .await?;
    let input = record
        .inputs
        .iter()
        .find(|i| i.shape.len() == 2 && i.shape[1] == dataset.width() as i64)
        .map(|i| i.name.as_str())
        .with_context(|| {
            format!(
                "the model has no [N, {}] input for the dataset's columns",
                dataset.width()
            )
        })?
        .to_owned();
    timeline(
        format!("pushed {} version {version}", scenario.model.name),
        &mut report,
    );

    // The fleet: in this process, or spread over workers.
    let processes = options
        .processes
        .unwrap_or(scenario.processes)
        .clamp(1, scenario.device_count().max(1));
    let total = scenario.device_count();
    let mut parts: Vec<FleetPart> = Vec::new();
    let mut starting = Vec::new();
    for p in 0..processes {
        let (first, end) = (total * p / processes, total * (p + 1) / processes);
        let spec = FleetSpec {
            scenario: scenario.path.clone(),
            first,
            count: end - first,
            hub_url: url.clone(),
            hub_ca_pem: ca_pem.clone(),
            token: token.clone(),
            broker,
            input: input.clone(),
        };
        if processes == 1 {
            parts.push(FleetPart::Local(Box::new(
                Fleet::start(&spec, scenario.clone()).await?,
            )));
        } else {
            let exe = match &options.worker_exe {
                Some(exe) => exe.clone(),
                None => std::env::current_exe()?,
            };
            starting.push(tokio::spawn(async move {
                WorkerProcess::start(&exe, &spec).await
            }));
        }
    }
    for worker in starting {
        parts.push(FleetPart::Worker(Box::new(worker.await??)));
    }
    let fleet_status = |statuses: &[FleetStatus]| {
        let mut total = FleetStatus::default();
        statuses.iter().for_each(|s| total.add(s));
        total
    };
    let mut statuses: Vec<FleetStatus> = Vec::new();
    for part in parts.iter_mut() {
        statuses.push(part.tick().await.1);
    }
    let devices = fleet_status(&statuses).devices;
    timeline(
        format!(
            "{devices} devices enrolled and connected ({processes} process{})",
            if processes == 1 { "" } else { "es" }
        ),
        &mut report,
    );

    // Traffic: every device sends from now until the duration ends.
    let start = Instant::now();
    // Scenario times count from here; the report's timeline from the run's start.
    let traffic_offset = clock.elapsed().as_secs_f64();
    for part in parts.iter_mut() {
        part.start_traffic().await?;
    }
    // A large fleet's inventory is a large answer: read it less often.
    let inventory_every = (total / 2000).max(1) as u64;
    let mut ticks = 0u64;
    let (mut online, mut installed) = (0, 0);

    // The timeline: actions, offline periods, drift; progress and convergence.
    let mut actions: Vec<_> = scenario.actions.clone();
    actions.sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
    let mut next_action = 0;
    let mut deployed_at: Option<f64> = None;
    let mut deploy_target: Option<(u64, flotilla_api::LabelSelector)> = None;
    let drift_at = scenario
        .drift
        .iter()
        .map(|d| d.from_seconds)
        .reduce(f64::min);
    let mut drift_logged = false;
    let mut seen_events = 0i64;
    loop {
        let t = start.elapsed().as_secs_f64();
        while next_action < actions.len() && actions[next_action].at_seconds <= t {
            let action = &actions[next_action];
            next_action += 1;
            if let Some(file) = &action.push {
                let bytes = std::fs::read(file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let pushed = operator
                    .push(&scenario.model.name, bytes.into(), &PushRequest::default())
                    .await?;
                timeline(
                    format!(
                        "pushed {} version {} ({})",
                        scenario.model.name,
                        pushed.version,
                        file.file_name().unwrap_or_default().to_string_lossy()
                    ),
                    &mut report,
                );
                continue;
            }
            if let Some(template) = &action.rollout {
                let spec = RolloutSpec {
                    model: scenario.model.name.clone(),
                    ..template.clone()
                };
                let answer = match operator.create_rollout(&spec).await {
                    Ok(answer) => answer,
                    Err(refused) => {
                        timeline(format!("rollout refused: {refused}"), &mut report);
                        continue;
                    }
                };
                timeline(
                    format!(
                        "rollout {}: version {} to {} devices in waves {:?}",
                        answer.id, answer.version, answer.targets, answer.waves
                    ),
                    &mut report,
                );
                report.rollouts.push(RolloutReport {
                    id: answer.id.clone(),
                    version: answer.version,
                    started_at_seconds: traffic_offset + t,
                    ..RolloutReport::default()
                });
                continue;
            }
            let Some(deploy) = &action.deploy else {
                continue;
            };
            let answer = operator
                .deploy(&DeployRequest {
                    model: scenario.model.name.clone(),
                    version: deploy.version.clone(),
                    selector: deploy.selector.clone(),
                })
                .await?;
            timeline(
                format!(
                    "deploy {} {} to {:?}: {} devices",
                    scenario.model.name,
                    deploy.version,
                    deploy.selector.to_string(),
                    answer.devices.len()
                ),
                &mut report,
            );
            deployed_at.get_or_insert(t);
            deploy_target = Some((answer.version, deploy.selector.clone()));
        }
        follow_rollouts(&operator, &mut report).await?;
        for (part, status) in parts.iter_mut().zip(statuses.iter_mut()) {
            let (events, latest) = part.tick().await;
            *status = latest;
            for event in events {
                report.timeline.push(TimelineEvent {
                    at_seconds: traffic_offset + event.at_seconds,
                    what: event.what,
                });
            }
        }
        report
            .timeline
            .sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
        if let Some(at) = drift_at
            && t >= at
            && !drift_logged
        {
            drift_logged = true;
            report.drift.injected_at_seconds = Some(traffic_offset + at);
            timeline("drift injected".into(), &mut report);
        }
        // Inventory, events, progress.
        if ticks.is_multiple_of(inventory_every) || t >= scenario.duration_seconds {
            let list = operator.devices().await?;
            online = list.iter().filter(|d| d.online).count();
            installed = match &deploy_target {
                Some((v, _)) => list
                    .iter()
                    .filter(|d| d.serving.get(&scenario.model.name) == Some(v))
                    .count(),
                None => 0,
            };
        }
        ticks += 1;
        if let (Some(at), None, Some((_, selector))) = (
            deployed_at,
            report.installs.time_to_converge_seconds,
            &deploy_target,
        ) && selector.is_empty()
            && installed == devices
        {
            report.installs.time_to_converge_seconds = Some(t - at);
            timeline(format!("all {installed} devices serving"), &mut report);
        }
        let events = operator
            .events(&EventQuery {
                model: Some(scenario.model.name.clone()),
                after: Some(seen_events),
                limit: None,
            })
            .await?;
        for event in &events.events {
            seen_events = seen_events.max(event.id);
            if let Some(detail) = event.rollout_detail() {
                let kind = event.kind.as_str();
                if let Some(r) = report.rollouts.iter_mut().find(|r| r.id == detail.rollout) {
                    let seen = Some(traffic_offset + t);
                    match kind {
                        "rollout.failed" => r.failed_at_seconds = r.failed_at_seconds.or(seen),
                        "rollout.rolled_back" => {
                            r.restored_at_seconds = r.restored_at_seconds.or(seen)
                        }
                        "rollout.completed" => {
                            r.completed_at_seconds = r.completed_at_seconds.or(seen)
                        }
                        _ => {}
                    }
                }
                timeline(
                    format!("{kind} {}: {}", detail.rollout, detail.detail),
                    &mut report,
                );
            }
            if event.kind == "drift_alert" && report.drift.alert_at_seconds.is_none() {
                report.drift.alert_at_seconds = Some(traffic_offset + t);
                report.drift.latency_seconds = drift_at.map(|i| t - i);
                report.drift.drifted_features = event.drifted_features().unwrap_or_default();
                timeline(
                    format!("drift alert: {}", report.drift.drifted_features.join(", ")),
                    &mut report,
                );
            }
        }
        let now = fleet_status(&statuses);
        let sealed = now.sealed;
        let drift = match &embedded {
            Some(hub) => drift_gauges(
                &hub.hub
                    .metrics
                    .model_gauges
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            ),
            None => BTreeMap::new(),
        };
        report.series.push(Sample {
            at_seconds: traffic_offset + t,
            online,
            installed,
            requests: now.served,
            windows_sealed: sealed,
            drift,
        });
        progress(&format!(
            "t={t:>5.1}s online {online}/{devices} installed {installed} requests {} windows sealed {sealed} received {}",
            now.served,
            hub_telemetry_counts(&embedded, &url, ca_pem.as_deref())
                .await?
                .stored
        ));
        if t >= scenario.duration_seconds {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for part in parts.iter_mut() {
        part.stop_traffic().await?;
    }
    timeline("traffic stopped".into(), &mut report);

    // Settle: the last windows close, spools drain, the hub stores.
    tokio::time::sleep(Duration::from_secs(scenario.window_seconds) + Duration::from_millis(500))
        .await;
    let mut refused_requests;
    let settle_deadline = Instant::now() + Duration::from_secs(60 + scenario.window_seconds * 2);
    loop {
        for (part, status) in parts.iter_mut().zip(statuses.iter_mut()) {
            *status = part.tick().await.1;
        }
        let FleetStatus {
            sealed,
            acknowledged,
            backlog,
            dropped,
            lost,
            ..
        } = fleet_status(&statuses);
        let hub = hub_telemetry_counts(&embedded, &url, ca_pem.as_deref()).await?;
        let refused_clock = hub.refused.get("clock").copied().unwrap_or(0);
        let refused_other: u64 = hub
            .refused
            .iter()
            .filter(|(why, _)| *why != "clock")
            .map(|(_, n)| n)
            .sum();
        report.telemetry = TelemetryCounts {
            sealed,
            acknowledged,
            received: hub.stored,
            duplicates: hub.duplicates,
            dropped,
            lost,
            refused: hub.refused.clone(),
            reconciled: backlog == 0
                && refused_other == 0
                && sealed == hub.stored + refused_clock + dropped + lost
                && acknowledged == hub.stored + refused_clock,
        };
        refused_requests = hub.refused_requests.get("clock").copied().unwrap_or(0);
        if report.telemetry.reconciled || Instant::now() > settle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    follow_rollouts(&operator, &mut report).await?;
    let health = operator
        .health(&scenario.model.name, &SliceParams::default())
        .await?;
    let hub_counted: u64 = health.versions.values().map(|h| h.requests).sum();
    let fleet = fleet_status(&statuses);
    report.requests = Requests {
        served: fleet.served,
        failed: fleet.failed,
        not_ready: fleet.not_ready,
        while_down: fleet.while_down,
        lost_in_crashes: fleet.lost_in_crashes,
        dropped_with_windows: fleet.dropped_requests,
        refused_with_windows: refused_requests,
        hub_counted,
        reconciled: false,
    };
    let r = &report.requests;
    report.requests.reconciled =
        r.hub_counted + r.lost_in_crashes + r.dropped_with_windows + r.refused_with_windows
            == r.served + r.failed;
    let inventory = operator.devices().await?;
    if let Some((v, _)) = &deploy_target {
        for d in &inventory {
            if d.serving.get(&scenario.model.name) == Some(v) {
                report.installs.installed += 1;
            } else if let Some(failure) = d
                .last_outcomes
                .iter()
                .find(|o| o.state == InstallState::Failed)
            {
                report.installs.failed += 1;
                // Reasons name files and hashes; the step and the reason's first words group.
                let reason: String = failure
                    .reason
                    .as_deref()
                    .unwrap_or("")
                    .split([':', '(', '"'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                let step = failure.step.as_deref().unwrap_or("?");
                *report
                    .installs
                    .failures
                    .entry(format!("{step}: {reason}"))
                    .or_default() += 1;
            } else {
                report.installs.pending += 1;
            }
        }
    }
    let coordinator_is_fleet = processes == 1;
    report.resources = Resources {
        devices,
        processes,
        fleet_rss_mib: fleet.rss_kib / 1024.0,
        fleet_peak_rss_mib: fleet.peak_rss_kib / 1024.0,
        rss_per_device_kib: fleet.device_rss_kib / devices.max(1) as f64,
        fleet_cpu_seconds: fleet.cpu_seconds,
        hub: hub_process(
            &url,
            ca_pem.as_deref(),
            coordinator_is_fleet && embedded.is_some(),
        )
        .await,
    };
    for part in parts {
        part.shutdown().await?;
    }
    if let Some(hub) = embedded {
        hub.hub.shutdown().await?;
    }
    Ok(report)
}

/// Wasserstein/σ per feature from the hub's drift gauges (`flotilla_drift_score`).
fn drift_gauges(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| {
            l.starts_with("flotilla_drift_score{") && l.contains("metric=\"wasserstein_sigma\"")
        })
        .filter_map(|l| {
            let feature = l.split("feature=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((feature.to_owned(), value))
        })
        .collect()
}

/// Follows the run's rollouts: phase, installs, devices back on their previous version.
async fn follow_rollouts(operator: &AdminClient, report: &mut Report) -> anyhow::Result<()> {
    for rollout in report.rollouts.iter_mut() {
        let finished = match rollout.phase.as_str() {
            "completed" | "aborted" => true,
            "rolled_back" => rollout.restored_at_seconds.is_some(),
            _ => false,
        };
        if finished {
            continue;
        }
        let view = operator.rollout(&rollout.id).await?;
        rollout.phase = view.phase.name().to_owned();
        rollout.targets = view.targets as u64;
        rollout.told = view.told as u64;
        rollout.installed = view.installed as u64;
        rollout.failed = view.failed as u64;
        rollout.restored = view.restored as u64;
        rollout.reason = view.reason;
    }
    Ok(())
}

/// The hub's own CPU and memory from its /metrics; `None` when it shares this process with
/// the fleet (its figures would be the fleet's).
async fn hub_process(
    url: &str,
    ca_pem: Option<&str>,
    shared_with_fleet: bool,
) -> Option<HubProcess> {
    if shared_with_fleet {
        return None;
    }
    let text = admin_client(url, None, ca_pem)
        .ok()?
        .metrics_text()
        .await
        .ok()?;
    let value = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
    };
    Some(HubProcess {
        cpu_seconds: value("process_cpu_seconds_total ")?,
        rss_mib: value("process_resident_memory_bytes ")? / (1024.0 * 1024.0),
        peak_rss_mib: value("process_resident_memory_peak_bytes ")? / (1024.0 * 1024.0),
        open_fds: value("process_open_fds ").unwrap_or(0.0) as u64,
    })
}

/// Windows the hub stored and duplicate deliveries, from its metrics.
/// The hub's telemetry counters: windows stored, repeats, refusals and their requests.
#[derive(Debug, Default)]
struct HubTelemetry {
    stored: u64,
    duplicates: u64,
    refused: BTreeMap<String, u64>,
    refused_requests: BTreeMap<String, u64>,
}

async fn hub_telemetry_counts(
    embedded: &Option<TestHub>,
    url: &str,
    ca_pem: Option<&str>,
) -> anyhow::Result<HubTelemetry> {
    let by_reason = |map: BTreeMap<&'static str, u64>| -> BTreeMap<String, u64> {
        map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };
    if let Some(hub) = embedded {
        let m = &hub.hub.metrics;
        return Ok(HubTelemetry {
            stored: m.telemetry_windows_stored.load(Ordering::Relaxed),
            duplicates: m.telemetry_duplicates.load(Ordering::Relaxed),
            refused: by_reason(m.telemetry_rejections()),
            refused_requests: by_reason(m.telemetry_rejected_requests()),
        });
    }
    let text = admin_client(url, None, ca_pem)?.metrics_text().await?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    // `NAME{reason="R"} N` lines.
    let labelled = |name: &str| -> BTreeMap<String, u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix("{reason=\""))
            .filter_map(|rest| {
                let (reason, value) = rest.split_once("\"} ")?;
                Some((reason.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    };
    Ok(HubTelemetry {
        stored: value("flotilla_hub_telemetry_windows_stored_total "),
        duplicates: value("flotilla_hub_telemetry_duplicates_total "),
        refused: labelled("flotilla_hub_telemetry_rejected_total"),
        refused_requests: labelled("flotilla_hub_telemetry_rejected_requests_total"),
    })
}
