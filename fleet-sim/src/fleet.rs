//! The device side of a run: one real agent core per simulated device (own key, enrollment,
//! MQTT connection, QUIC downloads, install state machine, inference, sketches and spool),
//! their traffic, and the faults that happen to devices (network cuts and shaping, crashes).
//! A `Fleet` holds some or all of a scenario's devices; the coordinator (runner.rs) runs
//! one in its own process or several in worker processes (worker.rs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use flotilla_agent::run_command::{AgentCore, CoreInferError, RunConfig, start_core};
use flotilla_agent::sync::InjectedFaults;
use flotilla_agent::telemetry::TelemetryConfig;
use flotilla_common::clock::{Clock, SystemClock};
use flotilla_proto::inference::TensorData;
use flotilla_runtime::NamedTensor;
use serde::{Deserialize, Serialize};

use crate::proxy::CohortProxy;
use crate::scenario::{DriftInjection, Scenario};
use crate::traffic::{Dataset, Sampler};
use flotilla_testkit::{TestAgent, admin_client, enrollment_token};

/// Which devices a fleet runs and where they find the hub.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetSpec {
    pub scenario: PathBuf,
    /// Devices `first..first + count` of the scenario (numbered cohort by cohort).
    pub first: usize,
    pub count: usize,
    pub hub_url: String,
    /// The hub's CA certificate (PEM), for an https hub.
    pub hub_ca_pem: Option<String>,
    pub token: String,
    pub broker: SocketAddr,
    /// The model input the dataset's rows go to.
    pub input: String,
}

/// What a fleet's devices did so far; fleets' statuses add up.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FleetStatus {
    pub devices: usize,
    /// Telemetry windows sealed into spools, acknowledged by the broker, still waiting,
    /// dropped (spool full) and lost (corrupt spool), over every core each device had.
    pub sealed: u64,
    pub acknowledged: u64,
    pub backlog: u64,
    pub dropped: u64,
    pub lost: u64,
    /// Requests in the dropped windows.
    pub dropped_requests: u64,
    /// Requests answered, failed, sent before any install, not sent (device down), and
    /// answered but lost with a crashed core's open window.
    pub served: u64,
    pub failed: u64,
    pub not_ready: u64,
    pub while_down: u64,
    pub lost_in_crashes: u64,
    /// The process's memory and CPU, and memory the devices added.
    pub rss_kib: f64,
    pub peak_rss_kib: f64,
    pub device_rss_kib: f64,
    pub cpu_seconds: f64,
}

impl FleetStatus {
    pub fn add(&mut self, other: &FleetStatus) {
        self.devices += other.devices;
        self.sealed += other.sealed;
        self.acknowledged += other.acknowledged;
        self.backlog += other.backlog;
        self.dropped += other.dropped;
        self.lost += other.lost;
        self.dropped_requests += other.dropped_requests;
        self.served += other.served;
        self.failed += other.failed;
        self.not_ready += other.not_ready;
        self.while_down += other.while_down;
        self.lost_in_crashes += other.lost_in_crashes;
        self.rss_kib += other.rss_kib;
        self.peak_rss_kib += other.peak_rss_kib;
        self.device_rss_kib += other.device_rss_kib;
        self.cpu_seconds += other.cpu_seconds;
    }
}

/// Something that happened to the fleet, seconds after traffic started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FleetEvent {
    pub at_seconds: f64,
    pub what: String,
}

#[derive(Debug, Default)]
struct Counters {
    served: AtomicU64,
    failed: AtomicU64,
    not_ready: AtomicU64,
    down: AtomicU64,
    lost_in_crashes: AtomicU64,
}

/// A simulated device: its agent core (absent while crashed), the config that restarts it,
/// and the telemetry counters of the cores it had before (each core counts from zero).
#[derive(Debug)]
struct Device {
    /// The device's number in the scenario (seeds its traffic).
    index: usize,
    cohort: usize,
    core: tokio::sync::RwLock<Option<AgentCore>>,
    config: RunConfig,
    earlier_sealed: AtomicU64,
    earlier_acknowledged: AtomicU64,
}

/// One device's telemetry counters.
#[derive(Default)]
struct DeviceTelemetry {
    sealed: u64,
    acknowledged: u64,
    backlog: u64,
    dropped: u64,
    dropped_requests: u64,
    lost: u64,
}

impl Device {
    async fn telemetry(&self) -> DeviceTelemetry {
        let mut t = DeviceTelemetry {
            sealed: self.earlier_sealed.load(Ordering::Relaxed),
            acknowledged: self.earlier_acknowledged.load(Ordering::Relaxed),
            ..Default::default()
        };
        if let Some(core) = self.core.read().await.as_ref() {
            let status = &core.telemetry.status;
            t.sealed += status.windows_sealed.load(Ordering::Relaxed);
            t.acknowledged += status.windows_acknowledged.load(Ordering::Relaxed);
            t.backlog = status.spool.backlog().0;
            let counters = status.spool.counters();
            (t.dropped, t.dropped_requests, t.lost) =
                (counters.dropped, counters.dropped_requests, counters.lost);
        }
        t
    }

    /// Crashes the core; returns the requests its open window held (lost with it).
    async fn crash(&self) -> u64 {
        let Some(core) = self.core.write().await.take() else {
            return 0;
        };
        // Read after the core is dead: a window being sealed at the moment of the crash is
        // then either counted sealed (it is in the spool) or still open (lost), never both.
        let (status, recorder) = (
            core.telemetry.status.clone(),
            core.telemetry.recorder.clone(),
        );
        core.crash().await;
        self.earlier_sealed.fetch_add(
            status.windows_sealed.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.earlier_acknowledged.fetch_add(
            status.windows_acknowledged.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        recorder.pending_requests()
    }

    async fn restart(&self) -> anyhow::Result<()> {
        let core = start_core(&self.config, SystemClock::shared()).await?;
        *self.core.write().await = Some(core);
        Ok(())
    }
}

pub(crate) fn proc_status_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0.0)
}

pub(crate) fn cpu_seconds() -> f64 {
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

/// Some or all of a scenario's devices, with their traffic and device-side faults.
#[derive(Debug)]
pub struct Fleet {
    scenario: Scenario,
    dataset: Arc<Dataset>,
    input: String,
    devices: Vec<Arc<Device>>,
    /// Per cohort: the proxy its devices reach the broker through, when it needs one.
    proxies: Vec<Option<CohortProxy>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    /// Set by `start_drift`: drift injections without a start time apply from then.
    drift_started: Arc<AtomicBool>,
    started: Option<Instant>,
    traffic: Vec<tokio::task::JoinHandle<()>>,
    restarts: tokio::task::JoinSet<anyhow::Result<()>>,
    next_crash: usize,
    device_rss_kib: f64,
    _states: tempfile::TempDir,
}

impl Fleet {
    /// Enrolls and starts the spec's devices (64 at a time) and their proxies.
    pub async fn start(spec: &FleetSpec, scenario: Scenario) -> anyhow::Result<Fleet> {
        let dataset = Arc::new(Dataset::read(scenario.dataset_path())?);
        let operator = admin_client(
            &spec.hub_url,
            Some(spec.token.clone()),
            spec.hub_ca_pem.as_deref(),
        )?;
        let engine = scenario.inference.engine().map_err(anyhow::Error::msg)?;
        let mut proxies = Vec::new();
        let first_cohort = scenario.cohort_of(spec.first);
        let last_cohort = scenario.cohort_of(spec.first + spec.count.max(1) - 1);
        for (c, cohort) in scenario.cohorts.iter().enumerate() {
            let ours = (first_cohort..=last_cohort).contains(&c);
            proxies.push(if ours && cohort.needs_proxy() {
                Some(CohortProxy::start(spec.broker, cohort.network).await?)
            } else {
                None
            });
        }
        let states = tempfile::tempdir()?;
        let rss_before = proc_status_kib("VmRSS:");
        let mut devices = Vec::with_capacity(spec.count);
        let mut pending = Vec::new();
        for index in spec.first..spec.first + spec.count {
            let c = scenario.cohort_of(index);
            let cohort = &scenario.cohorts[c];
            let labels: Vec<(&str, &str)> = cohort
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let token = enrollment_token(&operator, &labels).await?;
            let state_dir = states.path().join(format!("device-{index}"));
            let mut agent = TestAgent::new(&spec.hub_url, &token, &state_dir);
            if let Some(per_minute) = cohort.capture_per_minute {
                agent = agent.capture(&scenario.model.name, per_minute);
            }
            let config = agent
                .broker(proxies[c].as_ref().map_or(spec.broker, |p| p.address))
                .heartbeat_seconds(scenario.heartbeat_seconds)
                .window_seconds(scenario.window_seconds)
                .upload_spread_seconds(scenario.upload_spread_seconds)
                .spool_bytes(
                    cohort
                        .spool_kib
                        .map_or(TelemetryConfig::default().spool_max_bytes, |k| k * 1024),
                )
                .engine(engine.clone(), scenario.inference.sessions)
                .faults(InjectedFaults {
                    corrupt_download: cohort.corrupt_download_rate,
                    unloadable_install: cohort.install_failure_rate,
                    clock_skew_ms: (cohort.clock_skew_seconds * 1000.0) as i64,
                })
                .config()
                .clone();
            pending.push((
                index,
                c,
                config.clone(),
                tokio::spawn(async move { start_core(&config, SystemClock::shared()).await }),
            ));
            if pending.len() == 64 {
                for (index, c, config, task) in pending.drain(..) {
                    devices.push(new_device(index, c, task.await??, config));
                }
            }
        }
        for (index, c, config, task) in pending.drain(..) {
            devices.push(new_device(index, c, task.await??, config));
        }
        let device_rss_kib = proc_status_kib("VmRSS:") - rss_before;
        Ok(Fleet {
            scenario,
            dataset,
            input: spec.input.clone(),
            devices,
            proxies,
            counters: Arc::new(Counters::default()),
            stop: Arc::new(AtomicBool::new(false)),
            drift_started: Arc::new(AtomicBool::new(false)),
            started: None,
            traffic: Vec::new(),
            restarts: tokio::task::JoinSet::new(),
            next_crash: 0,
            device_rss_kib,
            _states: states,
        })
    }

    /// Starts every device's requests; scenario times count from here.
    pub fn start_traffic(&mut self) {
        let start = Instant::now();
        self.started = Some(start);
        for device in &self.devices {
            let cohort = self.scenario.cohorts[device.cohort].clone();
            let drifts: Vec<(usize, DriftInjection)> = self
                .scenario
                .drift
                .iter()
                .filter(|d| d.cohort == cohort.name)
                .filter_map(|d| {
                    self.dataset
                        .names
                        .iter()
                        .position(|n| *n == d.feature)
                        .map(|col| (col, d.clone()))
                })
                .collect();
            let drift_started = self.drift_started.clone();
            let (device, dataset, counters, stop, input, model) = (
                device.clone(),
                self.dataset.clone(),
                self.counters.clone(),
                self.stop.clone(),
                self.input.clone(),
                self.scenario.model.name.clone(),
            );
            let seed = device.index as u64 * 7919 + 17;
            self.traffic.push(tokio::spawn(async move {
                let mut sampler = Sampler::new(seed);
                let gap = Duration::from_secs_f64(1.0 / cohort.requests_per_second);
                tokio::time::sleep(gap.mul_f64(sampler.unit())).await;
                while !stop.load(Ordering::Relaxed) {
                    let t = start.elapsed().as_secs_f64();
                    let active: Vec<(usize, &DriftInjection)> = drifts
                        .iter()
                        .filter(|(_, d)| {
                            t >= d.from_seconds
                                || (d.from_seconds.is_infinite()
                                    && drift_started.load(Ordering::Relaxed))
                        })
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
    }

    /// Starts the scenario's drift injections that have no start time of their own.
    pub fn start_drift(&self) {
        self.drift_started.store(true, Ordering::Relaxed);
    }

    /// Applies what the scenario says happens to devices by now (network cuts, crashes) and
    /// returns what happened. Nothing before traffic starts.
    pub async fn tick(&mut self) -> Vec<FleetEvent> {
        let Some(started) = self.started else {
            return Vec::new();
        };
        let t = started.elapsed().as_secs_f64();
        let mut events = Vec::new();
        let mut event = |what: String| {
            events.push(FleetEvent {
                at_seconds: t,
                what,
            })
        };
        if self.stop.load(Ordering::Relaxed) {
            return events;
        }
        for (cohort, proxy) in self.scenario.cohorts.iter().zip(&self.proxies) {
            let Some(proxy) = proxy else { continue };
            let offline = cohort
                .offline
                .iter()
                .any(|p| t >= p.from_seconds && t < p.until_seconds);
            if offline && proxy.is_plugged() {
                proxy.unplug();
                event(format!("cohort {} cut off", cohort.name));
            } else if !offline && !proxy.is_plugged() {
                proxy.plug();
                event(format!("cohort {} back online", cohort.name));
            }
        }
        let mut crashes = self.scenario.crashes.clone();
        crashes.sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
        while self.next_crash < crashes.len() && crashes[self.next_crash].at_seconds <= t {
            let crash = &crashes[self.next_crash];
            self.next_crash += 1;
            let Some(cohort) = self
                .scenario
                .cohorts
                .iter()
                .position(|c| c.name == crash.cohort)
            else {
                continue;
            };
            // Telemetry windows close on whole multiples of the window on every device at
            // once; a crash just after a seal would find the open windows empty and show
            // nothing of what a crash loses, so it waits for the middle of the window.
            let window_ms = self.scenario.window_seconds.max(1) as i64 * 1000;
            tokio::time::sleep(wait_for_mid_window(SystemClock.now_ms(), window_ms)).await;
            let (mut lost, mut crashed) = (0, 0);
            for device in self.devices.iter().filter(|d| d.cohort == cohort) {
                lost += device.crash().await;
                crashed += 1;
                let (device, down) = (device.clone(), Duration::from_secs_f64(crash.down_seconds));
                self.restarts.spawn(async move {
                    tokio::time::sleep(down).await;
                    device.restart().await
                });
            }
            if crashed > 0 {
                self.counters
                    .lost_in_crashes
                    .fetch_add(lost, Ordering::Relaxed);
                event(format!(
                    "cohort {} crashed ({crashed} agents, {lost} requests in open windows lost)",
                    crash.cohort
                ));
            }
        }
        events
    }

    /// Stops the traffic, waits for crashed devices to come back, reconnects every cohort.
    pub async fn stop_traffic(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.traffic.drain(..) {
            task.await?;
        }
        while let Some(restarted) = self.restarts.join_next().await {
            restarted??;
        }
        for proxy in self.proxies.iter().flatten() {
            proxy.plug();
        }
        Ok(())
    }

    pub async fn status(&self) -> FleetStatus {
        let c = &self.counters;
        let mut status = FleetStatus {
            devices: self.devices.len(),
            served: c.served.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            not_ready: c.not_ready.load(Ordering::Relaxed),
            while_down: c.down.load(Ordering::Relaxed),
            lost_in_crashes: c.lost_in_crashes.load(Ordering::Relaxed),
            rss_kib: proc_status_kib("VmRSS:"),
            peak_rss_kib: proc_status_kib("VmHWM:"),
            device_rss_kib: self.device_rss_kib,
            cpu_seconds: cpu_seconds(),
            ..FleetStatus::default()
        };
        for device in &self.devices {
            let t = device.telemetry().await;
            status.sealed += t.sealed;
            status.acknowledged += t.acknowledged;
            status.backlog += t.backlog;
            status.dropped += t.dropped;
            status.lost += t.lost;
            status.dropped_requests += t.dropped_requests;
        }
        status
    }

    /// Stops every core the way SIGTERM would (open windows sealed and spooled).
    pub async fn shutdown(self) {
        for device in self.devices {
            if let Some(core) = device.core.write().await.take() {
                core.stop().await;
            }
        }
    }
}

/// How long from `now_ms` until the middle half of a window of `window_ms` (windows start on
/// whole multiples of it).
fn wait_for_mid_window(now_ms: i64, window_ms: i64) -> Duration {
    let phase = now_ms.rem_euclid(window_ms);
    if (window_ms / 4..=window_ms * 3 / 4).contains(&phase) {
        return Duration::ZERO;
    }
    Duration::from_millis((window_ms / 2 - phase).rem_euclid(window_ms) as u64)
}

fn new_device(index: usize, cohort: usize, core: AgentCore, config: RunConfig) -> Arc<Device> {
    Arc::new(Device {
        index,
        cohort,
        core: tokio::sync::RwLock::new(Some(core)),
        config,
        earlier_sealed: AtomicU64::new(0),
        earlier_acknowledged: AtomicU64::new(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crashes_wait_for_the_middle_of_the_window() {
        let w = 2000;
        assert_eq!(wait_for_mid_window(10_000, w), Duration::from_millis(1000));
        assert_eq!(wait_for_mid_window(10_005, w), Duration::from_millis(995));
        assert_eq!(wait_for_mid_window(10_500, w), Duration::ZERO);
        assert_eq!(wait_for_mid_window(11_200, w), Duration::ZERO);
        assert_eq!(wait_for_mid_window(11_900, w), Duration::from_millis(1100));
    }
}
