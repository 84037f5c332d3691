//! What drift telemetry costs on the device (docs/BENCHMARKS.md):
//! - the sketch update per feature value and per request, on the window accumulator alone;
//! - the share of inference time it adds: two in-process agent servers on loopback TCP, the
//!   same iris model and client, one recording telemetry and one not, measured in alternating
//!   rounds of one run;
//! - the bytes one feature costs per window once the batch is sealed (zstd, signed), at k=200.
//!
//! `cargo bench -p flotilla-agent --bench telemetry -- [--seconds S] [--rounds R]`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flotilla_agent::config::{ModelConfig, ServeConfig};
use flotilla_agent::metrics::Metrics;
use flotilla_agent::repository::ModelRepository;
use flotilla_agent::server::{AppState, start};
use flotilla_agent::telemetry::{Recorder, WindowAccumulator, extract_features};
use flotilla_common::signing::SigningKey;
use flotilla_common::sketch::{DEVICE_K, NumericProfile, Profile};
use flotilla_common::telemetry::{NamedProfile, WindowBatch, seal_frame};
use flotilla_proto::inference::TensorData;
use flotilla_proto::telemetry::{FeatureMap, PredictionKind, PredictionOutput};
use flotilla_runtime::{NamedTensor, init_onnx_runtime};

mod support;

use support::{HttpCase, Round, Target, http_round, machine, median, summarize};

fn arg(flag: &str) -> Option<f64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
}

fn iris_map() -> Arc<FeatureMap> {
    Arc::new(FeatureMap {
        input: "float_input".into(),
        features: (0..4).map(|i| format!("f{i}")).collect(),
        categorical: vec![],
        predictions: vec![
            PredictionOutput {
                output: "label".into(),
                kind: PredictionKind::Class,
            },
            PredictionOutput {
                output: "probabilities".into(),
                kind: PredictionKind::Score,
            },
        ],
    })
}

/// Nanoseconds per request (1 row: 4 features, a label, 3 scores, latency) and per feature
/// value (1000-row requests, features only).
fn update_cost() -> (f64, f64) {
    let map = iris_map();
    let one_row = [NamedTensor {
        name: "float_input".into(),
        shape: vec![1, 4],
        data: TensorData::Fp32(vec![5.1, 3.5, 1.4, 0.2]),
    }];
    let outputs = [
        NamedTensor {
            name: "label".into(),
            shape: vec![1],
            data: TensorData::Int64(vec![0]),
        },
        NamedTensor {
            name: "probabilities".into(),
            shape: vec![1, 3],
            data: TensorData::Fp32(vec![0.9, 0.07, 0.03]),
        },
    ];
    let per_request: Vec<f64> = (0..5)
        .map(|round| {
            let mut window = WindowAccumulator::new(Some(map.clone()));
            let n = 200_000;
            let started = Instant::now();
            for i in 0..n {
                let rows = extract_features(&map, &one_row).unwrap();
                window.record_success(
                    Some(&rows),
                    &outputs,
                    0.1 + (i % 7 + round) as f32 * 0.01,
                    None,
                    0,
                );
            }
            started.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    let wide: Vec<f32> = (0..4000).map(|i| (i % 997) as f32 * 0.01).collect();
    let batch = [NamedTensor {
        name: "float_input".into(),
        shape: vec![1000, 4],
        data: TensorData::Fp32(wide),
    }];
    let features_only = Arc::new(FeatureMap {
        predictions: vec![],
        ..(*map).clone()
    });
    let per_value: Vec<f64> = (0..5)
        .map(|_| {
            let mut window = WindowAccumulator::new(Some(features_only.clone()));
            let n = 500;
            let started = Instant::now();
            for _ in 0..n {
                let rows = extract_features(&features_only, &batch).unwrap();
                window.record_success(Some(&rows), &[], 0.1, None, 0);
            }
            started.elapsed().as_nanos() as f64 / (n * 4000) as f64
        })
        .collect();
    (median(per_request), median(per_value))
}

/// Sealed bytes per feature for a window of `rows` rows of 10 features.
fn bytes_per_feature(rows: usize) -> f64 {
    let key = SigningKey::generate().unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let features: Vec<NamedProfile> = (0..10)
        .map(|f| {
            let mut p = NumericProfile::new(DEVICE_K);
            for _ in 0..rows {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Roughly normal: a sum of four uniforms, scaled per feature.
                let u = (0..4)
                    .map(|k| ((state >> (k * 16)) & 0xffff) as f32 / 65536.0)
                    .sum::<f32>();
                p.update(Some(u * (f as f32 + 1.0) + f as f32 * 10.0));
            }
            NamedProfile {
                name: format!("feature_{f}"),
                profile: Profile::Numeric(p),
            }
        })
        .collect();
    let batch = WindowBatch {
        batch_id: [1; 16],
        device_id: "dev-0123456789abcdef".into(),
        model: "model".into(),
        version: 1,
        window_start_ms: 0,
        window_end_ms: 60_000,
        requests: rows as u64,
        errors: Default::default(),
        latency_ms: NumericProfile::new(DEVICE_K),
        features,
        predictions: vec![],
        spool_dropped_total: 0,
        spool_lost_total: 0,
        captures: vec![],
    };
    seal_frame(&batch, &key).len() as f64 / 10.0
}

fn main() {
    let seconds = arg("--seconds").unwrap_or(3.0);
    let rounds = arg("--rounds").unwrap_or(5.0) as usize;
    println!("machine: {}", machine());
    let (per_request, per_value) = update_cost();
    println!(
        "sketch update: {per_request:.0} ns per 1-row iris request (4 features, label, 3 scores, latency); {per_value:.1} ns per feature value (1000-row requests)"
    );
    for rows in [1_000, 10_000, 100_000, 1_000_000] {
        println!(
            "sealed window, 10 features x {rows} rows: {:.0} bytes per feature",
            bytes_per_feature(rows)
        );
    }

    init_onnx_runtime(None).expect("ONNX Runtime (deploy/fetch-onnxruntime.sh)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let model = ModelConfig {
        name: "iris".into(),
        path: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/iris_classifier.onnx"),
        sessions: Some(2),
        intra_op_threads: None,
        queue_depth: None,
        engine: Default::default(),
    };
    let targets: Vec<(&str, Target)> = runtime.block_on(async {
        let mut targets = Vec::new();
        for (name, telemetry) in [
            ("telemetry off", None),
            (
                "telemetry on",
                Some(Arc::new(Recorder::new(
                    HashMap::new(),
                    flotilla_common::clock::SystemClock::shared(),
                ))),
            ),
        ] {
            let repository = Arc::new(ModelRepository::load(std::slice::from_ref(&model)).unwrap());
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            drop(listener);
            let config = ServeConfig {
                http: Some(address),
                ..ServeConfig::default()
            };
            let state = AppState {
                repository,
                metrics: Arc::new(Metrics::default()),
                max_body_bytes: config.max_body_bytes,
                telemetry,
                telemetry_status: None,
                connections: None,
            };
            // Kept running for the whole benchmark.
            std::mem::forget(start(&config, state).await.unwrap());
            targets.push((name, Target::Tcp(address)));
        }
        targets
    });
    let body = serde_json::json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let case = |target: &Target| HttpCase {
        target: target.clone(),
        method: hyper::Method::POST,
        path: "/v2/models/iris/infer".into(),
        headers: vec![("content-type", "application/json".into())],
        body: Bytes::from(serde_json::to_vec(&body).unwrap()),
    };
    println!(
        "\n| case | concurrency | p50 µs | p99 µs | req/s | errors |\n|---|---|---|---|---|---|"
    );
    for concurrency in [1, 16] {
        let mut results: Vec<Vec<Round>> = vec![Vec::new(), Vec::new()];
        for (i, (_, target)) in targets.iter().enumerate() {
            runtime.block_on(http_round(&case(target), concurrency, 0.5));
            let _ = i;
        }
        // Alternate the two servers round by round so drift in the machine hits both alike.
        for _ in 0..rounds {
            for (i, (_, target)) in targets.iter().enumerate() {
                results[i].push(runtime.block_on(http_round(&case(target), concurrency, seconds)));
            }
        }
        let summaries: Vec<_> = results.into_iter().map(summarize).collect();
        for ((name, _), s) in targets.iter().zip(&summaries) {
            println!(
                "| {name} | {concurrency} | {:.1} | {:.1} | {:.0} | {} |",
                s.p50_us, s.p99_us, s.throughput, s.errors
            );
        }
        let (off, on) = (summaries[0], summaries[1]);
        println!(
            "| added by telemetry | {concurrency} | {:+.1}% | {:+.1}% | {:+.1}% | |",
            (on.p50_us / off.p50_us - 1.0) * 100.0,
            (on.p99_us / off.p99_us - 1.0) * 100.0,
            (on.throughput / off.throughput - 1.0) * 100.0
        );
    }
}
