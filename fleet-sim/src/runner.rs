//! Runs a scenario: a hub (embedded or external), one real agent core per simulated device
//! (own key, enrollment, MQTT connection through its cohort's proxy, QUIC downloads, install
//! state machine, ONNX Runtime sessions, sketches and spool), traffic, faults, drift, the
//! operator's timeline; then waits for telemetry to settle and reconciles.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_agent::run_command::{AgentCore, CoreInferError, RunConfig, start_core};
use flotilla_agent::runtime::NamedTensor;
use flotilla_agent::telemetry::TelemetryConfig;
use flotilla_hub::client::AdminClient;
use flotilla_proto::inference::TensorData;
use hyper::Method;

use crate::embedded_hub::TestHub;
use crate::proxy::CohortProxy;
use crate::report::*;
use crate::scenario::Scenario;
use crate::traffic::{Dataset, Sampler};

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
    },
}

/// Request counters of the whole fleet.
#[derive(Debug, Default)]
struct Counters {
    served: AtomicU64,
    failed: AtomicU64,
    not_ready: AtomicU64,
    /// Not sent: the device was crashed.
    down: AtomicU64,
    /// Served but lost with a crashed core's open window.
    lost_in_crashes: AtomicU64,
}

/// A simulated device: its agent core (absent while crashed), the config that restarts it,
/// and the telemetry counters of the cores it had before (each core counts from zero).
struct Device {
    cohort: usize,
    core: tokio::sync::RwLock<Option<AgentCore>>,
    config: RunConfig,
    earlier_sealed: AtomicU64,
    earlier_acknowledged: AtomicU64,
}

impl Device {
    fn new(cohort: usize, core: AgentCore, config: RunConfig) -> Arc<Device> {
        Arc::new(Device {
            cohort,
            core: tokio::sync::RwLock::new(Some(core)),
            config,
            earlier_sealed: AtomicU64::new(0),
            earlier_acknowledged: AtomicU64::new(0),
        })
    }

    /// Windows sealed and acknowledged by every core this device has had.
    async fn telemetry(&self) -> (u64, u64, u64, u64, u64) {
        let (mut sealed, mut acknowledged) = (
            self.earlier_sealed.load(Ordering::Relaxed),
            self.earlier_acknowledged.load(Ordering::Relaxed),
        );
        let (mut backlog, mut dropped, mut lost) = (0, 0, 0);
        if let Some(core) = self.core.read().await.as_ref() {
            let status = &core.telemetry.status;
            sealed += status.windows_sealed.load(Ordering::Relaxed);
            acknowledged += status.windows_acknowledged.load(Ordering::Relaxed);
            backlog = status.spool.backlog().0;
            let counters = status.spool.counters();
            (dropped, lost) = (counters.dropped, counters.lost);
        }
        (sealed, acknowledged, backlog, dropped, lost)
    }

    /// Crashes the core; returns the requests its open window held (lost with it).
    async fn crash(&self) -> u64 {
        let Some(core) = self.core.write().await.take() else {
            return 0;
        };
        let status = &core.telemetry.status;
        self.earlier_sealed.fetch_add(
            status.windows_sealed.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.earlier_acknowledged.fetch_add(
            status.windows_acknowledged.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let open = core.telemetry.recorder.pending_requests();
        core.crash().await;
        open
    }

    async fn restart(&self) -> anyhow::Result<()> {
        let core = start_core(&self.config).await?;
        *self.core.write().await = Some(core);
        Ok(())
    }
}

fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0.0)
}

fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some(
                (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
                    / 100.0,
            )
        })
        .unwrap_or(0.0)
}

/// Runs `scenario` to the end and reports. `progress` gets a line every second or so.
pub async fn run(
    scenario: &Scenario,
    target: HubTarget,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Report> {
    let dataset = Arc::new(Dataset::read(scenario.dataset_path())?);
    let (embedded, url, token, broker) = match target {
        HubTarget::Embedded => {
            let hub = TestHub::start(1, scenario.drift_lookback_seconds).await?;
            let (url, token, broker) =
                (hub.hub.url.clone(), hub.operator_token.clone(), hub.broker);
            (Some(hub), url, token, broker)
        }
        HubTarget::External { url, token, broker } => (None, url, token, broker),
    };
    let operator = AdminClient::new(&url, Some(token.clone()))?;
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
    let mut query = String::new();
    let reference = match &scenario.model.reference {
        Some(file) => {
            let (names, encoded) = flotilla_hub::cli_telemetry::reference_from_file(file, &[])?;
            query = format!("?features={}", names.join(","));
            Some(encoded)
        }
        None => None,
    };
    let bytes = std::fs::read(&scenario.model.file)
        .with_context(|| format!("cannot read {}", scenario.model.file.display()))?;
    let pushed = operator
        .upload(
            &format!("/api/v1/models/{}/versions{query}", scenario.model.name),
            bytes.into(),
        )
        .await?;
    let version = pushed["version"]
        .as_u64()
        .context("push answered no version")?;
    if let Some(encoded) = reference {
        flotilla_hub::cli_telemetry::upload_reference(
            &operator,
            &scenario.model.name,
            version,
            encoded,
        )
        .await?;
    }
    let record = operator
        .json(
            Method::GET,
            &format!("/api/v1/models/{}/versions/{version}", scenario.model.name),
            None,
        )
        .await?;
    let input = record["inputs"]
        .as_array()
        .and_then(|inputs| {
            inputs.iter().find(|i| {
                i["shape"]
                    .as_array()
                    .is_some_and(|s| s.len() == 2 && s[1].as_i64() == Some(dataset.width() as i64))
            })
        })
        .and_then(|i| i["name"].as_str())
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

    // Proxies and devices.
    let mut proxies = Vec::new();
    for _ in &scenario.cohorts {
        proxies.push(CohortProxy::start(broker).await?);
    }
    let states = tempfile::tempdir()?;
    let rss_before = rss_kib();
    let mut devices: Vec<Arc<Device>> = Vec::new();
    let mut pending = Vec::new();
    let mut index = 0usize;
    for (c, cohort) in scenario.cohorts.iter().enumerate() {
        for _ in 0..cohort.devices {
            let answer = operator
                .json(
                    Method::POST,
                    "/api/v1/enrollment-tokens",
                    Some(serde_json::json!({"labels": cohort.labels, "ttl_seconds": 3600})),
                )
                .await?;
            let config = RunConfig {
                hub: url.clone(),
                enrollment_token: answer["token"].as_str().map(str::to_owned),
                state_dir: states.path().join(format!("device-{index}")),
                socket: None,
                socket_mode: "0660".into(),
                http: None,
                ort_lib: None,
                sessions: Some(1),
                intra_op_threads: Some(1),
                hardware: BTreeMap::new(),
                mqtt: Some(proxies[c].address.to_string()),
                heartbeat_seconds: scenario.heartbeat_seconds,
                telemetry: TelemetryConfig {
                    window_seconds: scenario.window_seconds,
                    reconnect_jitter_seconds: 1.0,
                    drain_per_second: 50.0,
                    ..TelemetryConfig::default()
                },
            };
            pending.push((
                c,
                config.clone(),
                tokio::spawn(async move { start_core(&config).await }),
            ));
            index += 1;
            if pending.len() == 64 {
                for (c, config, task) in pending.drain(..) {
                    devices.push(Device::new(c, task.await??, config));
                }
            }
        }
    }
    for (c, config, task) in pending.drain(..) {
        devices.push(Device::new(c, task.await??, config));
    }
    let rss_after = rss_kib();
    timeline(
        format!("{} devices enrolled and connected", devices.len()),
        &mut report,
    );

    // Traffic: one task per device, from now until the duration ends.
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    // Scenario times count from here; the report's timeline from the run's start.
    let traffic_offset = clock.elapsed().as_secs_f64();
    let mut traffic = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        let cohort = scenario.cohorts[device.cohort].clone();
        let drifts: Vec<(usize, crate::scenario::DriftInjection)> = scenario
            .drift
            .iter()
            .filter(|d| d.cohort == cohort.name)
            .filter_map(|d| {
                dataset
                    .names
                    .iter()
                    .position(|n| *n == d.feature)
                    .map(|col| (col, d.clone()))
            })
            .collect();
        let (device, dataset, counters, stop, input, model) = (
            device.clone(),
            dataset.clone(),
            counters.clone(),
            stop.clone(),
            input.clone(),
            scenario.model.name.clone(),
        );
        traffic.push(tokio::spawn(async move {
            let mut sampler = Sampler::new(i as u64 * 7919 + 17);
            let gap = Duration::from_secs_f64(1.0 / cohort.requests_per_second);
            tokio::time::sleep(gap.mul_f64(sampler.unit())).await;
            while !stop.load(Ordering::Relaxed) {
                let t = start.elapsed().as_secs_f64();
                let active: Vec<(usize, &crate::scenario::DriftInjection)> = drifts
                    .iter()
                    .filter(|(_, d)| t >= d.from_seconds)
                    .map(|(c, d)| (*c, d))
                    .collect();
                let values = sampler.rows(&dataset, cohort.rows_per_request, &active);
                let tensor = NamedTensor {
                    name: input.clone(),
                    shape: vec![cohort.rows_per_request as i64, dataset.width() as i64],
                    data: TensorData::Fp32(values),
                };
                let answer = match device.core.read().await.as_ref() {
                    Some(core) => Some(core.infer(&model, vec![tensor]).await),
                    None => None,
                };
                let counter = match answer {
                    Some(Ok(_)) => &counters.served,
                    Some(Err(CoreInferError::NotServed(_))) => &counters.not_ready,
                    Some(Err(CoreInferError::Failed(_))) => &counters.failed,
                    None => &counters.down,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(gap).await;
            }
        }));
    }

    // The timeline: actions, offline periods, drift; progress and convergence.
    let mut actions: Vec<_> = scenario.actions.clone();
    actions.sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
    let mut next_action = 0;
    let mut deployed_at: Option<f64> = None;
    let mut deploy_target: Option<(u64, String)> = None;
    let drift_at = scenario
        .drift
        .iter()
        .map(|d| d.from_seconds)
        .reduce(f64::min);
    let mut crashes = scenario.crashes.clone();
    crashes.sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
    let mut next_crash = 0;
    let mut restarts = tokio::task::JoinSet::new();
    let mut drift_logged = false;
    let mut seen_events = 0i64;
    loop {
        let t = start.elapsed().as_secs_f64();
        while next_action < actions.len() && actions[next_action].at_seconds <= t {
            let deploy = &actions[next_action].deploy;
            let answer = operator
                .json(Method::POST, "/api/v1/deployments", Some(serde_json::json!({"model": scenario.model.name, "version": deploy.version, "selector": deploy.selector})))
                .await?;
            timeline(
                format!(
                    "deploy {} {} to {:?}: {} devices",
                    scenario.model.name,
                    deploy.version,
                    deploy.selector,
                    answer["devices"].as_array().map_or(0, Vec::len)
                ),
                &mut report,
            );
            deployed_at.get_or_insert(t);
            deploy_target = Some((
                answer["version"].as_u64().unwrap_or(version),
                deploy.selector.clone(),
            ));
            next_action += 1;
        }
        for (c, cohort) in scenario.cohorts.iter().enumerate() {
            let offline = cohort
                .offline
                .iter()
                .any(|p| t >= p.from_seconds && t < p.until_seconds);
            if offline && proxies[c].is_plugged() {
                proxies[c].unplug();
                timeline(format!("cohort {} cut off", cohort.name), &mut report);
            } else if !offline && !proxies[c].is_plugged() {
                proxies[c].plug();
                timeline(format!("cohort {} back online", cohort.name), &mut report);
            }
        }
        while next_crash < crashes.len() && crashes[next_crash].at_seconds <= t {
            let crash = &crashes[next_crash];
            let cohort = scenario
                .cohorts
                .iter()
                .position(|c| c.name == crash.cohort)
                .expect("checked at load");
            let mut lost = 0;
            let mut crashed = 0;
            for device in devices.iter().filter(|d| d.cohort == cohort) {
                lost += device.crash().await;
                crashed += 1;
                let (device, down) = (device.clone(), Duration::from_secs_f64(crash.down_seconds));
                restarts.spawn(async move {
                    tokio::time::sleep(down).await;
                    device.restart().await
                });
            }
            counters.lost_in_crashes.fetch_add(lost, Ordering::Relaxed);
            timeline(
                format!(
                    "cohort {} crashed ({crashed} agents, {lost} requests in open windows lost)",
                    crash.cohort
                ),
                &mut report,
            );
            next_crash += 1;
        }
        if let Some(at) = drift_at
            && t >= at
            && !drift_logged
        {
            drift_logged = true;
            report.drift.injected_at_seconds = Some(traffic_offset + at);
            timeline("drift injected".into(), &mut report);
        }
        // Inventory, events, progress.
        let inventory = operator.json(Method::GET, "/api/v1/devices", None).await?;
        let list = inventory.as_array().cloned().unwrap_or_default();
        let online = list.iter().filter(|d| d["online"] == true).count();
        let installed = match &deploy_target {
            Some((v, _)) => list
                .iter()
                .filter(|d| d["serving"][&scenario.model.name].as_u64() == Some(*v))
                .count(),
            None => 0,
        };
        if let (Some(at), None, Some((_, selector))) = (
            deployed_at,
            report.installs.time_to_converge_seconds,
            &deploy_target,
        ) && selector.is_empty()
            && installed == devices.len()
        {
            report.installs.time_to_converge_seconds = Some(t - at);
            timeline(format!("all {installed} devices serving"), &mut report);
        }
        let events = operator
            .json(
                Method::GET,
                &format!(
                    "/api/v1/events?model={}&after={seen_events}",
                    scenario.model.name
                ),
                None,
            )
            .await?;
        for event in events["events"].as_array().into_iter().flatten() {
            seen_events = seen_events.max(event["id"].as_i64().unwrap_or(0));
            if event["kind"] == "drift_alert" && report.drift.alert_at_seconds.is_none() {
                report.drift.alert_at_seconds = Some(traffic_offset + t);
                report.drift.latency_seconds = drift_at.map(|i| t - i);
                report.drift.drifted_features = event["detail"]["drifted_features"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect();
                timeline(
                    format!("drift alert: {}", report.drift.drifted_features.join(", ")),
                    &mut report,
                );
            }
        }
        let mut sealed = 0;
        for d in &devices {
            sealed += d.telemetry().await.0;
        }
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
            requests: counters.served.load(Ordering::Relaxed),
            windows_sealed: sealed,
            drift,
        });
        progress(&format!(
            "t={t:>5.1}s online {online}/{} installed {installed} requests {} windows sealed {sealed}",
            devices.len(),
            counters.served.load(Ordering::Relaxed)
        ));
        if t >= scenario.duration_seconds {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in traffic {
        task.await?;
    }
    while let Some(restarted) = restarts.join_next().await {
        restarted??;
    }
    for proxy in &proxies {
        proxy.plug();
    }
    timeline("traffic stopped".into(), &mut report);

    // Settle: the last windows close, spools drain, the hub stores.
    tokio::time::sleep(Duration::from_secs(scenario.window_seconds) + Duration::from_millis(500))
        .await;
    let settle_deadline = Instant::now() + Duration::from_secs(60 + scenario.window_seconds * 2);
    loop {
        let (mut sealed, mut acknowledged, mut backlog, mut dropped, mut lost) = (0, 0, 0, 0, 0);
        for d in &devices {
            let (s, a, b, dr, l) = d.telemetry().await;
            sealed += s;
            acknowledged += a;
            backlog += b;
            dropped += dr;
            lost += l;
        }
        let (received, duplicates) = hub_telemetry_counts(&embedded, &url).await?;
        report.telemetry = TelemetryCounts {
            sealed,
            acknowledged,
            received,
            duplicates,
            dropped,
            lost,
            reconciled: backlog == 0
                && sealed == received + dropped + lost
                && acknowledged == received,
        };
        if report.telemetry.reconciled || Instant::now() > settle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let health = operator
        .json(
            Method::GET,
            &format!("/api/v1/models/{}/health", scenario.model.name),
            None,
        )
        .await?;
    let hub_counted: u64 = health["versions"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, h)| h["requests"].as_u64())
        .sum();
    report.requests = Requests {
        served: counters.served.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        not_ready: counters.not_ready.load(Ordering::Relaxed),
        while_down: counters.down.load(Ordering::Relaxed),
        lost_in_crashes: counters.lost_in_crashes.load(Ordering::Relaxed),
        hub_counted,
        reconciled: false,
    };
    let r = &report.requests;
    report.requests.reconciled = r.hub_counted + r.lost_in_crashes == r.served + r.failed;
    let inventory = operator.json(Method::GET, "/api/v1/devices", None).await?;
    if let Some((v, _)) = &deploy_target {
        for d in inventory.as_array().into_iter().flatten() {
            if d["serving"][&scenario.model.name].as_u64() == Some(*v) {
                report.installs.installed += 1;
            } else if d["last_outcomes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["state"] == "failed")
            {
                report.installs.failed += 1;
            } else {
                report.installs.pending += 1;
            }
        }
    }
    report.resources = Resources {
        devices: devices.len(),
        process_rss_mib: rss_kib() / 1024.0,
        rss_per_device_kib: (rss_after - rss_before) / devices.len().max(1) as f64,
        process_cpu_seconds: cpu_seconds(),
    };
    for device in devices {
        if let Some(core) = device.core.write().await.take() {
            core.stop().await;
        }
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

/// Windows the hub stored and duplicate deliveries, from its metrics.
async fn hub_telemetry_counts(embedded: &Option<TestHub>, url: &str) -> anyhow::Result<(u64, u64)> {
    if let Some(hub) = embedded {
        let m = &hub.hub.metrics;
        return Ok((
            m.telemetry_windows_stored.load(Ordering::Relaxed),
            m.telemetry_duplicates.load(Ordering::Relaxed),
        ));
    }
    let (_, body) = AdminClient::new(url, None)?
        .request(Method::GET, "/metrics", "text/plain", Default::default())
        .await?;
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    Ok((
        value("flotilla_hub_telemetry_windows_stored_total "),
        value("flotilla_hub_telemetry_duplicates_total "),
    ))
}
