//! Fan-out benchmark (docs/BENCHMARKS.md, issue 3): time from `deploy` to every one of N
//! agent cores reporting the model installed. The hub is a real `flotilla-hub` process; the
//! agents are real agent cores (`flotilla_agent::run_command::start_core`: own key,
//! enrollment, SQLite state, MQTT connection, QUIC download, verification, ONNX Runtime load,
//! smoke test, signed report), many in this one process.
//!
//! `cargo bench -p flotilla-hub --bench fanout -- [--agents N]` (default 1000). Needs about
//! 6 open files per agent (`ulimit -n`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_agent::run_command::{RunConfig, start_core};
use flotilla_hub::client::AdminClient;
use hyper::Method;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kib / 1024.0
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let data = tempfile::tempdir().unwrap();
    let hub_bin = env!("CARGO_BIN_EXE_flotilla-hub");
    let init = Command::new(hub_bin)
        .args(["init", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let token = String::from_utf8(init.stdout)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("operator token"))
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let (api, mqtt, quic) = (free_port(), free_port(), free_udp_port());
    let mut hub = Command::new(hub_bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{api}"),
            "--mqtt-listen",
            &format!("127.0.0.1:{mqtt}"),
            "--quic-listen",
            &format!("127.0.0.1:{quic}"),
            "--data-dir",
        ])
        .arg(data.path())
        .env("FLOTILLA_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hub.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let hub_pid = hub.id();
    let _hub = Killed(hub);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{api}");
    let client = AdminClient::new(&url, Some(token)).unwrap();
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
                };
                starting.push(tokio::spawn(async move { start_core(&config).await }));
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
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {cpu}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
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
