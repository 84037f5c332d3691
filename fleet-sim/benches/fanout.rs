//! Fan-out benchmark (docs/BENCHMARKS.md, issue 3): time from `deploy` to every one of N
//! agent cores reporting the model installed. The hub is a real `flotilla-hub` process; the
//! agents are real agent cores (`flotilla_agent::run_command::start_core`: own key,
//! enrollment, SQLite state, MQTT connection, QUIC download, verification, ONNX Runtime load,
//! smoke test, signed report), many in this one process.
//!
//! `cargo bench -p flotilla-sim --bench fanout -- [--agents N]` (default 1000). Needs about
//! 6 open files per agent (`ulimit -n`).

use std::time::{Duration, Instant};

use flotilla_api::AdminClient;
use flotilla_api::devices::DeployRequest;
use flotilla_api::models::PushRequest;
use flotilla_testkit::measure::{cpu_seconds, machine, rss_mib};
use flotilla_testkit::{HubProcess, TestAgent, enrollment_token, repo_root as repo};

async fn count(client: &AdminClient, model: &str, version: u64) -> (usize, usize) {
    let devices = client.devices().await.unwrap();
    let online = devices.iter().filter(|d| d.online).count();
    let installed = devices
        .iter()
        .filter(|d| d.serving.get(model) == Some(&version))
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
    let mut hub = HubProcess::init("");
    hub.log_level = "error".into();
    hub.serve();
    let hub_pid = hub.pid();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = hub.url.clone();
    let client = hub.operator();
    let model = std::fs::read(repo().join("agent/tests/fixtures/iris_classifier.onnx")).unwrap();
    runtime
        .block_on(client.push("iris", model.into(), &PushRequest::default()))
        .unwrap();

    let states = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let cores = runtime.block_on(async {
        let mut cores = Vec::with_capacity(agents);
        for batch in (0..agents).collect::<Vec<_>>().chunks(50) {
            let mut starting = Vec::new();
            for &i in batch {
                let token = enrollment_token(&client, &[("n", &i.to_string())])
                    .await
                    .unwrap();
                let agent = TestAgent::new(&url, &token, &states.path().join(i.to_string()))
                    .heartbeat_seconds(30);
                starting.push(tokio::spawn(async move { agent.start().await }));
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
        .block_on(client.deploy(&DeployRequest {
            model: "iris".into(),
            version: "1".into(),
            selector: Default::default(),
        }))
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
