//! Fan-out benchmark (docs/BENCHMARKS.md, issue 3): time from `deploy` to every one of N
//! agent cores reporting the model installed. The hub is a real `flotilla-hub` process; the
//! agents are real agent cores (`flotilla_agent::run_command::start_core`: own key,
//! enrollment, SQLite state, MQTT connection, QUIC download, verification, ONNX Runtime load,
//! smoke test, signed report), many in this one process.
//!
//! `cargo bench -p flotilla-sim --bench fanout -- [--agents N]` (default 1000). Needs about
//! 6 open files per agent (`ulimit -n`).

mod support;

use std::time::{Duration, Instant};

use flotilla_agent::run_command::{RunConfig, start_core};
use flotilla_hub::client::AdminClient;
use hyper::Method;
use support::{Hub, cpu_seconds, machine, repo, rss_mib};

async fn count(client: &AdminClient, model: &str, version: u64) -> (usize, usize) {
    let devices = client
        .json(Method::GET, "/api/v1/devices", None)
        .await
        .unwrap();
    let devices = devices.as_array().unwrap();
    let online = devices.iter().filter(|d| d["online"] == true).count();
    let installed = devices
        .iter()
        .filter(|d| d["serving"][model] == version)
        .count();
    (online, installed)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agents: usize = args
        .iter()
        .position(|a| a == "--agents")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap())
        .unwrap_or(1000);
    let hub = Hub::start();
    let hub_pid = hub.pid;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = hub.url();
    let client = AdminClient::new(&url, Some(hub.token.clone())).unwrap();
    let model = std::fs::read(repo().join("agent/tests/fixtures/iris_classifier.onnx")).unwrap();
    runtime
        .block_on(client.upload("/api/v1/models/iris/versions", model.into()))
        .unwrap();

    let states = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let cores = runtime.block_on(async {
        let mut cores = Vec::with_capacity(agents);
        for batch in (0..agents).collect::<Vec<_>>().chunks(50) {
            let mut starting = Vec::new();
            for &i in batch {
                let answer = client.json(Method::POST, "/api/v1/enrollment-tokens", Some(serde_json::json!({"labels": {"n": i.to_string()}, "ttl_seconds": 3600}))).await.unwrap();
                let config = RunConfig {
                    hub: url.clone(),
                    enrollment_token: answer["token"].as_str().map(str::to_owned),
                    state_dir: states.path().join(i.to_string()),
                    socket: None,
                    socket_mode: "0660".into(),
                    http: None,
                    ort_lib: None,
                    sessions: Some(1),
                    intra_op_threads: Some(1),
                    hardware: Default::default(),
                    telemetry: Default::default(),
                    mqtt: None,
                    heartbeat_seconds: 30,
                    engine: Default::default(),
                    faults: Default::default(),
                };
                starting.push(tokio::spawn(async move { start_core(&config, flotilla_common::clock::SystemClock::shared()).await }));
            }
            for task in starting {
                cores.push(task.await.unwrap().unwrap());
            }
        }
        cores
    });
    let enrolled = started.elapsed().as_secs_f64();
    runtime.block_on(async {
        for _ in 0..600 {
            if count(&client, "iris", 1).await.0 == agents {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let connected = started.elapsed().as_secs_f64();
    let hub_cpu_before = cpu_seconds(hub_pid);
    let deploy_started = Instant::now();
    runtime
        .block_on(client.json(
            Method::POST,
            "/api/v1/deployments",
            Some(serde_json::json!({"model": "iris", "version": "1", "selector": ""})),
        ))
        .unwrap();
    let mut installed = 0;
    let mut samples = Vec::new();
    runtime.block_on(async {
        for _ in 0..3000 {
            installed = count(&client, "iris", 1).await.1;
            samples.push((deploy_started.elapsed().as_secs_f64(), installed));
            if installed == agents {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let converged = deploy_started.elapsed().as_secs_f64();
    let hub_cpu = cpu_seconds(hub_pid) - hub_cpu_before;
    println!("machine: {}", machine());
    println!();
    println!(
        "| agents | enrolled and started (s) | all online (s) | deploy to all installed (s) | installed | hub CPU during rollout (s) | hub RSS (MiB) | agent process RSS per agent (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {agents} | {enrolled:.1} | {connected:.1} | {converged:.1} | {installed} | {hub_cpu:.1} | {:.0} | {:.2} |",
        rss_mib(hub_pid),
        rss_mib(std::process::id()) / agents as f64
    );
    let half = samples
        .iter()
        .find(|(_, n)| *n * 2 >= agents)
        .map(|(t, _)| *t)
        .unwrap_or(f64::NAN);
    println!();
    println!("half the fleet installed after {half:.1} s");
    runtime.block_on(async {
        for core in cores {
            core.stop().await;
        }
    });
}
