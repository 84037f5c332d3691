//! The agent's latency and throughput benchmark (docs/BENCHMARKS.md): the same small model and
//! input, in one run, through in-process ONNX Runtime, the agent over its Unix socket (JSON and
//! binary tensors), the agent over TCP, and KServe's Python model server as the peer.
//!
//! `cargo bench -p flotilla-agent --bench inference -- [--seconds S] [--rounds R] [--sessions N]`
//! The peer runs when `.cache/peer-venv` exists (deploy/bench-peer-setup.sh makes it).
//! Each figure is the median over rounds; p50/p99 are per-request latencies within a round.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use ort::session::Session;
use ort::value::TensorRef;

mod support;

use support::{HttpCase, Round, Summary, Target, connect, http_round, machine, summarize};

const MODEL: &str = "iris";
const ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

struct Options {
    seconds: f64,
    rounds: usize,
    sessions: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    Options {
        seconds: value("--seconds")
            .map(|v| v.parse().expect("--seconds takes a number"))
            .unwrap_or(3.0),
        rounds: value("--rounds")
            .map(|v| v.parse().expect("--rounds takes a number"))
            .unwrap_or(3),
        sessions: value("--sessions")
            .map(|v| v.parse().expect("--sessions takes a number"))
            .unwrap_or(2),
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/iris_classifier.onnx")
}

/// In-process: `concurrency` threads, each with its own session, calling `run` in a loop.
fn in_process(concurrency: usize, seconds: f64) -> Round {
    let environment =
        flotilla_runtime::init_onnx_runtime(None).expect("ONNX Runtime: run deploy/setup.sh");
    let bytes = std::fs::read(model_path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut session = Session::builder(environment)
                .unwrap()
                .with_intra_threads(1)
                .unwrap()
                .with_inter_threads(1)
                .unwrap()
                .commit_from_memory(&bytes)
                .unwrap();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let begin = Instant::now();
                    let input = TensorRef::from_array_view(([1usize, 4], &ROW[..])).unwrap();
                    let outputs = session.run(ort::inputs!["float_input" => input]).unwrap();
                    let (_, probabilities) = outputs["probabilities"]
                        .try_extract_tensor::<f32>()
                        .unwrap();
                    let (_, label) = outputs["label"].try_extract_tensor::<i64>().unwrap();
                    std::hint::black_box((probabilities.to_vec(), label.to_vec()));
                    latencies.push(begin.elapsed());
                }
                latencies
            })
        })
        .collect();
    let latencies = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    Round {
        latencies,
        elapsed: started.elapsed(),
        errors: 0,
    }
}

/// The agent's runtime without HTTP: `LoadedModel::infer` (session pool, tensor conversion)
/// called from `concurrency` tasks on a 2-worker tokio runtime.
fn library_round(
    runtime: &tokio::runtime::Runtime,
    sessions: usize,
    concurrency: usize,
    seconds: f64,
) -> Round {
    use flotilla_proto::inference::TensorData;
    use flotilla_runtime::{LoadedModel, NamedTensor, SessionSettings};
    let settings = SessionSettings {
        sessions,
        intra_op_threads: 1,
        queue_depth: 1024,
        engine: Default::default(),
    };
    let model = Arc::new(LoadedModel::load(MODEL, 1, &model_path(), &settings).unwrap());
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let model = model.clone();
            runtime.spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let begin = Instant::now();
                    let input = NamedTensor {
                        name: "float_input".into(),
                        shape: vec![1, 4],
                        data: TensorData::Fp32(ROW.to_vec()),
                    };
                    let outputs = model
                        .infer(vec![input], vec!["label".into(), "probabilities".into()])
                        .await
                        .unwrap();
                    std::hint::black_box(outputs);
                    latencies.push(begin.elapsed());
                }
                latencies
            })
        })
        .collect();
    let latencies = tasks
        .into_iter()
        .flat_map(|t| runtime.block_on(t).unwrap())
        .collect();
    Round {
        latencies,
        elapsed: started.elapsed(),
        errors: 0,
    }
}

fn json_case(target: Target) -> HttpCase {
    let body = serde_json::json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]});
    HttpCase {
        target,
        method: hyper::Method::POST,
        path: format!("/v2/models/{MODEL}/infer"),
        headers: vec![("content-type", "application/json".into())],
        body: Bytes::from(serde_json::to_vec(&body).unwrap()),
    }
}

/// No inference at all: the cost of HTTP over the transport, for reference.
fn health_case(target: Target) -> HttpCase {
    HttpCase {
        target,
        method: hyper::Method::GET,
        path: "/v2/health/live".into(),
        headers: Vec::new(),
        body: Bytes::new(),
    }
}

fn binary_case(target: Target) -> HttpCase {
    let header = serde_json::json!({
        "inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
        "parameters": {"binary_data_output": true}
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let json_length = body.len();
    body.extend(ROW.iter().flat_map(|v| v.to_le_bytes()));
    HttpCase {
        target,
        method: hyper::Method::POST,
        path: format!("/v2/models/{MODEL}/infer"),
        headers: vec![
            ("content-type", "application/octet-stream".into()),
            ("inference-header-content-length", json_length.to_string()),
        ],
        body: Bytes::from(body),
    }
}

struct Agent {
    child: Child,
    socket: PathBuf,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(sessions: usize) -> Agent {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args([
            "serve",
            "--socket",
            socket.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
            "--sessions",
            &sessions.to_string(),
        ])
        .arg("--model")
        .arg(format!("{MODEL}={}", model_path().display()))
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let http = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .expect("ready line")
        .parse()
        .unwrap();
    Agent {
        child,
        socket,
        http,
        _dir: dir,
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

struct Peer {
    child: Child,
    address: SocketAddr,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_peer() -> Option<Peer> {
    let python = std::env::var_os("FLOTILLA_BENCH_PEER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/peer-venv/bin/python"));
    if !python.exists() {
        eprintln!(
            "peer skipped: {} not found (run deploy/bench-peer-setup.sh)",
            python.display()
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peer/kserve_onnx_server.py"))
        .args([
            "--model_name",
            MODEL,
            "--model-path",
            model_path().to_str().unwrap(),
            "--http_port",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let peer = Peer { child, address };
    for _ in 0..300 {
        if let Ok(stream) = tokio::net::TcpStream::connect(address).await {
            drop(stream);
            let mut sender = connect(&Target::Tcp(address)).await;
            let request = Request::get(format!("/v2/models/{MODEL}/ready"))
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap();
            if sender
                .send_request(request)
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
            {
                return Some(peer);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the KServe peer did not become ready");
}

fn row(name: &str, concurrency: usize, s: Summary) {
    println!(
        "| {name} | {concurrency} | {:.1} | {:.1} | {:.0} | {} |",
        s.p50_us, s.p99_us, s.throughput, s.errors
    );
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "machine: {}; {} s per round, median of {} rounds; agent sessions: {}",
        machine(),
        options.seconds,
        options.rounds,
        options.sessions
    );
    let agent = start_agent(options.sessions);
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(agent.child.id());
    let binary_size = std::fs::metadata(env!("CARGO_BIN_EXE_flotilla-agent"))
        .unwrap()
        .len();
    let peer = runtime.block_on(start_peer());

    let mut cases: Vec<(&str, HttpCase)> = vec![
        (
            "agent, Unix socket, GET /v2/health/live (HTTP only, no inference)",
            health_case(Target::Unix(agent.socket.clone())),
        ),
        (
            "agent, Unix socket, binary",
            binary_case(Target::Unix(agent.socket.clone())),
        ),
        (
            "agent, Unix socket, JSON",
            json_case(Target::Unix(agent.socket.clone())),
        ),
        ("agent, TCP, binary", binary_case(Target::Tcp(agent.http))),
        ("agent, TCP, JSON", json_case(Target::Tcp(agent.http))),
    ];
    if let Some(peer) = &peer {
        cases.push((
            "KServe Python server (peer), TCP, JSON",
            json_case(Target::Tcp(peer.address)),
        ));
    }
    println!();
    println!("| path | concurrency | p50 µs | p99 µs | requests/s | errors |");
    println!("|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for concurrency in [1, 16] {
        let rounds = (0..options.rounds)
            .map(|_| in_process(concurrency, options.seconds))
            .collect();
        let summary = summarize(rounds);
        row(
            "in-process ONNX Runtime (one session per thread)",
            concurrency,
            summary,
        );
        results.push(("in-process", concurrency, summary));
        let rounds = (0..options.rounds)
            .map(|_| library_round(&runtime, options.sessions, concurrency, options.seconds))
            .collect();
        let summary = summarize(rounds);
        row(
            "agent runtime in-process (session pool + conversion, no HTTP)",
            concurrency,
            summary,
        );
        results.push(("agent runtime", concurrency, summary));
        for (name, case) in &cases {
            // Warm up connections and caches, then measure.
            runtime.block_on(http_round(case, concurrency, 0.3));
            let rounds = (0..options.rounds)
                .map(|_| runtime.block_on(http_round(case, concurrency, options.seconds)))
                .collect();
            let summary = summarize(rounds);
            row(name, concurrency, summary);
            results.push((name, concurrency, summary));
        }
    }
    let find = |name: &str, c: usize| {
        results
            .iter()
            .find(|(n, cc, _)| n.starts_with(name) && *cc == c)
            .map(|(_, _, s)| *s)
    };
    println!();
    if let (Some(inproc), Some(socket)) =
        (find("in-process", 1), find("agent, Unix socket, binary", 1))
    {
        println!(
            "Unix socket binary p50 minus in-process p50 at concurrency 1: {:.1} µs (target: within 50 µs)",
            socket.p50_us - inproc.p50_us
        );
    }
    if let (Some(agent16), Some(peer16)) = (find("agent, TCP, JSON", 16), find("KServe", 16)) {
        println!(
            "agent TCP JSON vs peer throughput at concurrency 16: {:.1}x (target: at least 5x)",
            agent16.throughput / peer16.throughput
        );
    }
    if let (Some(agent16), Some(peer16)) =
        (find("agent, Unix socket, binary", 16), find("KServe", 16))
    {
        println!(
            "agent Unix socket binary vs peer throughput at concurrency 16: {:.1}x",
            agent16.throughput / peer16.throughput
        );
    }
    println!(
        "agent binary: {:.1} MiB (stripped release build); idle RSS with the model loaded: {:.1} MiB; after the run: {:.1} MiB",
        binary_size as f64 / 1048576.0,
        idle_rss as f64 / 1024.0,
        rss_kib(agent.child.id()) as f64 / 1024.0
    );
    drop(peer);
    drop(agent);
}
