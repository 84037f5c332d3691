//! `flotilla-sim demo`: Flotilla's whole loop on one machine, narrated. A hub (embedded
//! broker, SQLite, QUIC), a fleet of simulated devices and one real `flotilla-agent` process
//! serving on its Unix socket. Version 1 (trained by deploy/demo/retrain.py) rolls out in
//! waves; drift hits part of the fleet; the hub's retraining trigger runs the retraining
//! script, which pushes a candidate; the quality gate passes it and starts its canary
//! rollout; then a broken version (offline metrics fine, failing on real inputs) is pushed
//! and the fleet's gates roll it back. Everything here goes through the hub's public API
//! and the real binaries: the demo decides nothing the hub does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::Context;
use flotilla_api::AdminClient;
use flotilla_api::http::{HttpClient, Method};
use flotilla_api::quality::QualityPolicy;
use flotilla_api::rollouts::{GateVerdict, RolloutPhase, RolloutSpec, RolloutView};
use flotilla_api::telemetry::EventQuery;
use flotilla_api::triggers::{ReportOrError, RunStatus, TriggerRule, TriggerRun, TriggerRunQuery};
use flotilla_testkit::{TestHub, enrollment_token};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::fleet::{Fleet, FleetSpec};
use crate::scenario::Scenario;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The fleet (fleet-sim/scenarios/demo.toml).
    pub scenario: PathBuf,
    /// Scale the scenario's cohorts to this many simulated devices in all.
    pub devices: Option<usize>,
    /// A Python with scikit-learn and skl2onnx (.cache/venv/bin/python).
    pub python: PathBuf,
    /// deploy/demo/retrain.py.
    pub retrain_script: PathBuf,
    /// The `flotilla` CLI and `flotilla-agent` binaries.
    pub flotilla_cli: PathBuf,
    pub agent_exe: PathBuf,
    /// The broken version pushed last.
    pub broken_model: PathBuf,
    /// The longest wait for any one step.
    pub step_timeout: Duration,
}

/// What happened, for the caller (and the demo's test) to check.
#[derive(Debug, Clone, Default)]
pub struct DemoOutcome {
    pub hub_url: String,
    /// The hub's CA certificate (PEM).
    pub hub_ca_pem: String,
    pub operator_token: String,
    pub socket: PathBuf,
    /// Phase of each rollout in order (v1, the retrained candidate, the broken version).
    pub rollouts: Vec<(u64, RolloutPhase)>,
    pub trigger_run: Option<TriggerRun>,
    pub retrained_version: u64,
    pub broken_version: u64,
    /// The version the real agent serves at the end.
    pub agent_serves: Option<u64>,
}

/// A running demo: the hub, fleet and agent stay up until it is dropped, so a person can
/// look around with the printed commands.
#[derive(Debug)]
pub struct Demo {
    pub outcome: DemoOutcome,
    fleet: Option<Fleet>,
    _agent: tokio::process::Child,
    _hub: TestHub,
}

impl Demo {
    pub async fn stop(mut self) {
        if let Some(mut fleet) = self.fleet.take() {
            let _ = fleet.stop_traffic().await;
            fleet.shutdown().await;
        }
    }
}

/// Prints numbered steps and timestamped lines.
struct Narrator {
    start: Instant,
    step: usize,
}

impl Narrator {
    fn step(&mut self, text: &str) {
        self.step += 1;
        println!("\n== {}. {text}", self.step);
    }

    fn say(&self, text: &str) {
        let t = self.start.elapsed().as_secs();
        println!("[{:02}:{:02}] {text}", t / 60, t % 60);
    }
}

/// Polls `probe` every 500 ms until it gives a value, at most `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            anyhow::bail!("gave up after {} s waiting for {what}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An Open Inference Protocol answer, as far as the demo reads it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct InferAnswer {
    model_version: String,
    outputs: Vec<InferOutput>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct InferOutput {
    datatype: String,
    data: Value,
}

/// The version the agent serves iris at (from a real inference request over its socket),
/// and its answer; `None` while it answers with an error.
async fn agent_infer(socket: &Path) -> anyhow::Result<(Option<u64>, InferAnswer)> {
    let request = json!({"inputs": [{"name": "float_input", "shape": [3, 4], "datatype": "FP32",
        "data": [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 4.1, 1.0], [6.9, 3.1, 5.4, 2.1]]}]});
    let agent = HttpClient::new(&format!("unix:{}", socket.display()))?;
    let answer = agent
        .call(
            Method::POST,
            "/v2/models/iris/infer",
            &[("content-type", "application/json")],
            serde_json::to_vec(&request)?.into(),
        )
        .await
        .with_context(|| format!("cannot reach the agent at {}", socket.display()))?;
    if !answer.status.is_success() {
        return Ok((None, InferAnswer::default()));
    }
    let answer: InferAnswer = serde_json::from_slice(&answer.body)
        .context("the agent's answer is not an inference response")?;
    Ok((answer.model_version.parse().ok(), answer))
}

fn labels_of(answer: &InferAnswer) -> String {
    answer
        .outputs
        .iter()
        .find(|o| o.datatype == "INT64")
        .map(|o| o.data.to_string())
        .unwrap_or_default()
}

async fn run_script(
    narrator: &Narrator,
    options: &DemoOptions,
    args: &[&str],
) -> anyhow::Result<()> {
    // stderr goes to a file: read after the end, it would block a chatty script on a full
    // pipe while stdout is read.
    let errors = tempfile::NamedTempFile::new()?;
    let mut child = tokio::process::Command::new(&options.python)
        .arg(&options.retrain_script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(errors.reopen()?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", options.python.display()))?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    while let Some(line) = lines.next_line().await? {
        narrator.say(&line);
    }
    let status = child.wait().await?;
    if !status.success() {
        anyhow::bail!(
            "{} failed ({status}): {}",
            options.retrain_script.display(),
            std::fs::read_to_string(errors.path()).unwrap_or_default()
        );
    }
    Ok(())
}

fn gate_text(view: &RolloutView) -> String {
    view.gates
        .iter()
        .map(|g| {
            let verdict = match &g.verdict {
                GateVerdict::Pass => "pass",
                GateVerdict::Fail(_) => "fail",
                GateVerdict::Inconclusive(_) => "inconclusive",
            };
            format!("{} {verdict}", g.gate)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Follows a rollout to its end, saying each change of phase or wave.
async fn follow_rollout(
    narrator: &Narrator,
    client: &AdminClient,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<RolloutView> {
    let mut said = String::new();
    let deadline = Instant::now() + timeout;
    loop {
        let view = client.rollout(id).await?;
        let phase = view.phase.name();
        let waves = view.waves.len();
        // `wave` counts the waves started (past the last one once completed).
        let line = format!(
            "rollout of version {}: {phase}, wave {}/{waves} ({} devices told, {} installed{})",
            view.version,
            view.wave.min(waves),
            view.told,
            view.installed,
            if view.restored > 0 && phase.starts_with("roll") {
                format!(", {} back on their previous version", view.restored)
            } else {
                String::new()
            }
        );
        let key = format!("{phase} {} {}", view.wave, view.told);
        if key != said {
            narrator.say(&line);
            said = key;
        }
        if !view.phase.is_active() || view.phase == RolloutPhase::Paused {
            return Ok(view);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "gave up after {} s waiting for rollout {id} to finish: {line}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The model's newest version number.
async fn latest_version(client: &AdminClient, model: &str) -> anyhow::Result<u64> {
    let show = client.model(model).await?;
    Ok(show.versions.iter().map(|v| v.version).max().unwrap_or(0))
}

/// The newest rollout of version `version`, once there is one.
async fn rollout_of(client: &AdminClient, version: u64) -> anyhow::Result<Option<RolloutView>> {
    let list = client.rollouts().await?;
    Ok(list.into_iter().find(|r| r.version == version))
}

/// Scales the scenario's cohorts to `devices` in all, keeping their proportions.
fn scale(scenario: &mut Scenario, devices: usize) {
    let total = scenario.device_count().max(1);
    let mut left = devices;
    let count = scenario.cohorts.len();
    for (i, cohort) in scenario.cohorts.iter_mut().enumerate() {
        cohort.devices = if i + 1 == count {
            left
        } else {
            (cohort.devices * devices / total).max(1).min(left)
        };
        left -= cohort.devices;
    }
}

fn short(detail: &Value) -> String {
    let text = detail.to_string();
    if text.chars().count() > 150 {
        format!("{}…", text.chars().take(150).collect::<String>())
    } else {
        text
    }
}

/// Runs the demo to its end and returns it still running.
pub async fn run(options: &DemoOptions) -> anyhow::Result<Demo> {
    let mut narrator = Narrator {
        start: Instant::now(),
        step: 0,
    };
    let timeout = options.step_timeout;
    for (binary, package) in [
        (&options.flotilla_cli, "flotilla-cli"),
        (&options.agent_exe, "flotilla-agent"),
    ] {
        if !binary.is_file() {
            anyhow::bail!(
                "{} is missing: build it first (cargo build --release -p {package}; deploy/demo.sh builds every binary the demo runs)",
                binary.display()
            );
        }
    }
    let mut scenario = Scenario::load(&options.scenario)?;
    if let Some(devices) = options.devices {
        let devices = devices.max(scenario.cohorts.len());
        scale(&mut scenario, devices);
    }
    let model = scenario.model.name.clone();

    narrator.step("A hub: registry, embedded MQTT broker, QUIC artifacts, SQLite, all on loopback");
    let hub = TestHub::start(2, scenario.drift_lookback_seconds).await?;
    let client = hub.operator();
    let url = hub.hub.url.clone();
    let work = hub.data_dir.join("demo");
    std::fs::create_dir_all(&work)?;
    let token_file = work.join("operator-token");
    std::fs::write(&token_file, &hub.operator_token)?;
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    narrator.say(&hub.hub.ready_line());
    let script_args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--flotilla".into(),
            options.flotilla_cli.display().to_string(),
            "--hub".into(),
            url.clone(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--ca-file".into(),
            hub.data_dir.join("keys/ca.crt").display().to_string(),
            "--work".into(),
            work.join("models").display().to_string(),
        ]);
        args
    };

    narrator.step("Version 1: trained by deploy/demo/retrain.py (scikit-learn, skl2onnx) and pushed with its metrics and training data as the reference");
    let initial = script_args(&["--initial"]);
    run_script(
        &narrator,
        options,
        &initial.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await?;

    narrator.step(
        "The fleet: simulated devices (real agent cores) and one real flotilla-agent process",
    );
    let operator_token = hub.operator_token.clone();
    let spec = FleetSpec {
        scenario: scenario.path.clone(),
        first: 0,
        count: scenario.device_count(),
        hub_url: url.clone(),
        hub_ca_pem: Some(hub.ca_pem()),
        token: operator_token.clone(),
        broker: hub.broker,
        input: "float_input".into(),
    };
    let cohorts: Vec<String> = scenario
        .cohorts
        .iter()
        .map(|c| format!("{} {} ({:?})", c.devices, c.name, c.labels))
        .collect();
    let drift: Vec<String> = scenario
        .drift
        .iter()
        .map(|d| format!("{} {:+} on {}", d.feature, d.shift, d.cohort))
        .collect();
    let mut fleet = Fleet::start(&spec, scenario.clone()).await?;
    fleet.start_traffic();
    narrator.say(&format!(
        "{} simulated devices enrolled: {}; each sends {} requests of {} rows a second",
        spec.count,
        cohorts.join(", "),
        scenario.cohorts[0].requests_per_second,
        scenario.cohorts[0].rows_per_request
    ));
    let agent_dir = work.join("agent");
    std::fs::create_dir_all(&agent_dir)?;
    let token = enrollment_token(&client, &[("site", "lab")]).await?;
    let socket = agent_dir.join("agent.sock");
    std::fs::write(
        agent_dir.join("agent.toml"),
        format!(
            "hub = \"{url}\"\nenrollment_token = \"{token}\"\nstate_dir = \"state\"\nsocket = \"agent.sock\"\nsessions = 1\n\n[telemetry]\nwindow_seconds = {}\nreconnect_jitter_seconds = 0\n",
            scenario.window_seconds
        ),
    )?;
    let log = std::fs::File::create(agent_dir.join("agent.log"))?;
    let mut agent = tokio::process::Command::new(&options.agent_exe)
        .args(["run", "--config"])
        .arg(agent_dir.join("agent.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", options.agent_exe.display()))?;
    let mut agent_lines = BufReader::new(agent.stdout.take().expect("piped")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), agent_lines.next_line())
        .await
        .context("flotilla-agent did not start within 60 s")??
        .with_context(|| {
            format!(
                "flotilla-agent exited: {}",
                std::fs::read_to_string(agent_dir.join("agent.log")).unwrap_or_default()
            )
        })?;
    narrator.say(&format!("real agent: {ready}"));

    narrator.step("Roll version 1 out in waves (10% → 50% → 100%), each judged before the next");
    // A hundred simulated devices, the hub and a Python job share this machine's cores:
    // their latency is mostly scheduling noise (a new version's first requests on a busy
    // core are several times slower), so the demo's latency gate is wide; real devices keep
    // the default ratio of 1.2.
    let wave_gates = json!({"min_requests": 200, "latency_p99_ratio_max": 20});
    let spec: RolloutSpec = serde_json::from_value(json!({"model": model, "version": "1",
        "waves": [10, 50, 100], "soak_seconds": 4, "install_timeout_seconds": 120,
        "gates": wave_gates}))?;
    let created = client.create_rollout(&spec).await?;
    let v1 = follow_rollout(&narrator, &client, &created.id, timeout).await?;
    let mut outcome = DemoOutcome {
        hub_url: url.clone(),
        hub_ca_pem: hub.ca_pem(),
        operator_token,
        socket: socket.clone(),
        ..DemoOutcome::default()
    };
    outcome.rollouts.push((1, v1.phase));
    if v1.phase != RolloutPhase::Completed {
        anyhow::bail!(
            "version 1's rollout ended {}: {}",
            v1.phase,
            v1.reason.unwrap_or_default()
        );
    }
    let (served, answer) = wait_for("the real agent to serve version 1", timeout, || async {
        let (version, answer) = agent_infer(&socket).await?;
        Ok((version == Some(1)).then_some((version, answer)))
    })
    .await?;
    narrator.say(&format!(
        "alias production → 1. The real agent answers on its socket with version {}: labels {}",
        served.unwrap_or(0),
        labels_of(&answer)
    ));

    narrator.step("A quality gate for candidates, and a retraining trigger on fleet-wide drift");
    let auto_rollout = json!({"waves": [10, 50, 100], "soak_seconds": 4, "install_timeout_seconds": 120,
        "gates": {"min_requests": 200, "latency_p99_ratio_max": 20,
                  // A model retrained on drifted inputs predicts differently on them, and the
                  // canary's devices need not match the old cohort's mix: judge errors and latency.
                  "input_drift_features_max": 4, "prediction_drift_max": 4}});
    let policy: QualityPolicy = serde_json::from_value(
        json!({"rules": ["accuracy >= production.accuracy - 0.05"], "auto_rollout": auto_rollout}),
    )?;
    client.set_quality_gate(&model, &policy).await?;
    narrator.say("quality gate: accuracy >= production.accuracy - 0.05; a candidate that passes starts a canary rollout");
    let argv: Vec<String> = std::iter::once(options.python.display().to_string())
        .chain(std::iter::once(
            options.retrain_script.display().to_string(),
        ))
        .chain(script_args(&[]))
        .collect();
    let rule: TriggerRule = serde_json::from_value(json!({"window_seconds": 10,
        "cooldown_seconds": 3600, "drift": {"consecutive_windows": 2, "device_percent": 25},
        "action": {"command": {"argv": argv, "timeout_seconds": 600}}}))?;
    client.set_trigger_rule(&model, &rule).await?;
    narrator
        .say("trigger: drift on >= 25% of the judged devices in 2 windows of 10 s in a row → run retrain.py");

    narrator.step(&format!("Drift: {}", drift.join(", ")));
    fleet.start_drift();
    let drift_started = Instant::now();
    narrator.say("the clinics' sensors now read longer sepals and petals");
    let run = wait_for("the retraining trigger to fire", timeout, || async {
        let runs = client
            .trigger_runs(&TriggerRunQuery {
                model: Some(model.clone()),
                limit: None,
            })
            .await?;
        Ok(runs.runs.into_iter().next())
    })
    .await?;
    let run_id = run.id.clone();
    let evidence: Vec<String> = run
        .payload
        .evidence
        .iter()
        .map(|w| format!("{}/{}", w.drifting_devices, w.judged_devices))
        .collect();
    let drifted = match &run.payload.drift_report {
        Some(ReportOrError::Report(report)) => report.drifted_features.join(", "),
        Some(ReportOrError::Error { error }) => format!("no report: {error}"),
        None => "no report".into(),
    };
    narrator.say(&format!(
        "trigger {run_id} fired {:.0} s after the drift began ({drifted} drift; devices drifting per window: {}); the hub runs retrain.py",
        drift_started.elapsed().as_secs_f64(),
        evidence.join(", ")
    ));
    let run = wait_for("the retraining run to finish", timeout, || async {
        let run = client.trigger_run(&run_id).await?;
        Ok((!run.status.in_flight()).then_some(run))
    })
    .await?;
    // The job's output, as the hub kept it in the run's outcome.
    let output = run.outcome.as_str();
    let stdout = output
        .split_once("stdout: ")
        .map_or(output, |(_, rest)| rest)
        .split("; stderr:")
        .next()
        .unwrap_or("");
    for line in stdout.lines() {
        if line.starts_with("[retrain]") {
            narrator.say(line);
        } else {
            println!("        {line}");
        }
    }
    outcome.trigger_run = Some(run.clone());
    if run.status != RunStatus::Succeeded {
        anyhow::bail!("the retraining run failed: {}", run.outcome);
    }

    narrator.step("The candidate meets the quality gate; its canary rollout runs");
    let v2 = wait_for("the candidate's rollout", timeout, || async {
        let latest = latest_version(&client, &model).await?;
        if latest < 2 {
            return Ok(None);
        }
        Ok(rollout_of(&client, latest).await?.map(|r| (latest, r)))
    })
    .await;
    let (retrained, rollout) = match v2 {
        Ok(found) => found,
        Err(error) => {
            let events = client
                .events(&EventQuery {
                    model: Some(model.clone()),
                    ..EventQuery::default()
                })
                .await?;
            anyhow::bail!(
                "{error}; the hub's events: {:#}",
                serde_json::to_value(&events)?
            );
        }
    };
    outcome.retrained_version = retrained;
    narrator.say(&format!(
        "version {retrained} passed the quality gate; rollout {} started by the gate",
        rollout.id
    ));
    let v2 = follow_rollout(&narrator, &client, &rollout.id, timeout).await?;
    outcome.rollouts.push((retrained, v2.phase));
    narrator.say(&format!("gates of the last wave: {}", gate_text(&v2)));
    if v2.phase != RolloutPhase::Completed {
        anyhow::bail!(
            "the candidate's rollout ended {}: {}",
            v2.phase,
            v2.reason.unwrap_or_default()
        );
    }

    narrator.step("A broken version: its offline metrics look fine, it fails on real inputs");
    let accuracy = client
        .version(&model, &retrained.to_string())
        .await?
        .metrics
        .get("accuracy")
        .copied()
        .unwrap_or(0.95);
    let reference = work
        .join("models")
        .join("iris_retrained_from_v1_training.csv");
    let pushed = tokio::process::Command::new(&options.flotilla_cli)
        .env("FLOTILLA_HUB", &url)
        .env("FLOTILLA_CA_FILE", hub.data_dir.join("keys/ca.crt"))
        .env("FLOTILLA_TOKEN", &hub.operator_token)
        .args(["model", "push", &model])
        .arg(&options.broken_model)
        .arg("--metric")
        .arg(format!("accuracy={accuracy}"))
        .arg("--reference")
        .arg(&reference)
        .output()
        .await?;
    if !pushed.status.success() {
        anyhow::bail!(
            "pushing the broken version failed: {}",
            String::from_utf8_lossy(&pushed.stderr)
        );
    }
    for line in String::from_utf8_lossy(&pushed.stdout).lines() {
        narrator.say(line);
    }
    let (broken, rollout) = wait_for("the broken version's rollout", timeout, || async {
        let latest = latest_version(&client, &model).await?;
        if latest <= retrained {
            return Ok(None);
        }
        Ok(rollout_of(&client, latest).await?.map(|r| (latest, r)))
    })
    .await?;
    outcome.broken_version = broken;
    let v3 = follow_rollout(&narrator, &client, &rollout.id, timeout).await?;
    outcome.rollouts.push((broken, v3.phase));
    narrator.say(&format!(
        "{}: {}",
        v3.phase,
        v3.reason.as_deref().unwrap_or("")
    ));
    let (served, answer) = wait_for(
        "the real agent to serve the retrained version",
        timeout,
        || async {
            let (version, answer) = agent_infer(&socket).await?;
            Ok((version == Some(retrained)).then_some((version, answer)))
        },
    )
    .await?;
    outcome.agent_serves = served;
    narrator.say(&format!(
        "the real agent serves version {} again: labels {}",
        served.unwrap_or(0),
        labels_of(&answer)
    ));

    narrator.step("Timeline (the hub's events)");
    let events = client
        .events(&EventQuery {
            model: Some(model.clone()),
            after: None,
            limit: Some(1000),
        })
        .await?;
    let first = events.events.first().map_or(0, |e| e.at);
    for event in &events.events {
        println!(
            "  +{:>4} s  {:<22} v{:<3} {}",
            event.at - first,
            event.kind,
            event.version.map_or("-".to_owned(), |v| v.to_string()),
            short(&event.detail)
        );
    }
    let fleet_status = fleet.status().await;
    println!(
        "\nfleet: {} devices, {} requests served, {} failed (the broken version's canary), {} telemetry windows sent",
        fleet_status.devices, fleet_status.served, fleet_status.failed, fleet_status.acknowledged
    );
    let cli = options.flotilla_cli.display();
    println!(
        "\nLook around (the hub keeps running until Ctrl-C):\n  \
         export FLOTILLA_HUB={url} FLOTILLA_CA_FILE={} FLOTILLA_TOKEN={}\n  \
         {cli} rollout list\n  \
         {cli} rollout status {}\n  \
         {cli} trigger history\n  \
         {cli} trigger run {run_id}\n  \
         {cli} events --model {model}\n  \
         {cli} drift report {model} --since 10m --selector site=clinic\n  \
         {cli} health {model} --since 10m\n  \
         {cli} device list\n  \
         curl --unix-socket {} http://localhost/v2/models/{model}",
        hub.data_dir.join("keys/ca.crt").display(),
        hub.operator_token,
        rollout.id,
        socket.display()
    );
    Ok(Demo {
        outcome,
        fleet: Some(fleet),
        _agent: agent,
        _hub: hub,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_keeps_proportions_and_the_total() {
        let mut s =
            Scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/demo.toml"))
                .unwrap();
        scale(&mut s, 20);
        let sizes: Vec<usize> = s.cohorts.iter().map(|c| c.devices).collect();
        assert_eq!(sizes, [12, 8]);
        assert!(s.drift.iter().all(|d| d.from_seconds.is_infinite()));
    }
}
