//! Telemetry end to end with real processes on loopback: agents running the iris classifier
//! in ONNX Runtime send signed drift windows over MQTT; the hub verifies, deduplicates,
//! stores and reports. Shifted traffic on one agent drifts exactly the shifted features; an
//! agent cut off from the network delivers every window once when it comes back; bad frames
//! are refused by reason; a corrupt spool on the device is replaced and the loss reported.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_api::http::Method;
use flotilla_common::signing::SigningKey;
use flotilla_common::sketch::{CategoricalProfile, DEVICE_K, NumericProfile, Profile};
use flotilla_common::telemetry::{NamedProfile, WindowBatch, seal_frame};
use serde_json::json;

use crate::mqtt_peer::MqttPeer;
use crate::support::*;

const FEATURES: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The reference rows (a smoothed bootstrap of iris, see make_fixtures.py).
fn reference_rows() -> Vec<[f32; 4]> {
    let text = std::fs::read_to_string(fixture("iris_reference.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let v: Vec<f32> = line.split(',').map(|x| x.parse().unwrap()).collect();
            [v[0], v[1], v[2], v[3]]
        })
        .collect()
}

/// Deterministic sampling of reference rows (splitmix64), with `shift` added.
pub(crate) struct Traffic {
    rows: Vec<[f32; 4]>,
    state: u64,
}

impl Traffic {
    pub(crate) fn new(seed: u64) -> Traffic {
        Traffic {
            rows: reference_rows(),
            state: seed,
        }
    }

    fn batch(&mut self, n: usize, shift: [f32; 4]) -> Vec<[f32; 4]> {
        (0..n)
            .map(|_| {
                // splitmix64: a plain LCG here gave visibly biased samples.
                self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = self.state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                let row = self.rows[(z % self.rows.len() as u64) as usize];
                [
                    row[0] + shift[0],
                    row[1] + shift[1],
                    row[2] + shift[2],
                    row[3] + shift[3],
                ]
            })
            .collect()
    }

    /// `requests` requests of 50 rows each; every one must succeed.
    pub(crate) fn send(&mut self, agent: &AgentRun, requests: usize, shift: [f32; 4]) -> u64 {
        for _ in 0..requests {
            let rows = self.batch(50, shift);
            agent.infer_rows("iris", &rows).unwrap();
        }
        requests as u64 * 50
    }
}

pub(crate) fn push_iris_with_reference(hub: &HubProcess) {
    let out = hub.cli(
        Some(&hub.operator_token),
        &[
            "model",
            "push",
            "iris",
            fixture("iris_classifier.onnx").to_str().unwrap(),
            "--reference",
            fixture("iris_reference.csv").to_str().unwrap(),
        ],
    );
    let text = stdout(&out);
    assert!(
        text.contains("reference profile stored: 4 features"),
        "{text}"
    );
}

pub(crate) async fn deploy_iris(hub: &HubProcess) {
    hub.operator()
        .json(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"model": "iris", "version": "1", "selector": ""})),
        )
        .await
        .unwrap();
}

pub(crate) fn wait_serving_iris(agent: &AgentRun) {
    for _ in 0..600 {
        if agent.infer_rows("iris", &[[5.0, 3.4, 1.5, 0.2]]) == Ok(1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("agent never served iris 1:\n{}", agent.log());
}

async fn report(hub: &HubProcess, query: &str) -> serde_json::Value {
    report_of(hub, 1, query).await
}

async fn report_of(hub: &HubProcess, version: u64, query: &str) -> serde_json::Value {
    hub.reader()
        .json(
            Method::GET,
            &format!("/api/v1/models/iris/drift?version={version}&{query}"),
            None,
        )
        .await
        .unwrap()
}

/// Polls the drift report until its first feature has `rows` rows.
async fn wait_rows(hub: &HubProcess, query: &str, rows: u64) -> serde_json::Value {
    wait_rows_of(hub, 1, query, rows).await
}

async fn wait_rows_of(hub: &HubProcess, version: u64, query: &str, rows: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..600 {
        last = report_of(hub, version, query).await;
        if last["features"][0]["current_rows"].as_u64() == Some(rows) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the hub never had {rows} rows for {query}: {last:#}");
}

fn drifted(report: &serde_json::Value) -> Vec<String> {
    report["drifted_features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

pub(crate) const FAST_WINDOWS: &str =
    "[telemetry]\nwindow_seconds = 2\nreconnect_jitter_seconds = 0\n";

#[tokio::test(flavor = "multi_thread")]
async fn shifted_traffic_on_one_agent_drifts_exactly_the_shifted_features() {
    let hub = HubProcess::start_with(
        "[telemetry]\ndrift_check_seconds = 1\ndrift_lookback_seconds = 120\n",
    );
    push_iris_with_reference(&hub);
    python_datasketches_reads_the_reference(&hub).await;
    let a = AgentRun::start_with(&hub, &enroll_token(&hub, "site=a").await, FAST_WINDOWS).unwrap();
    let b = AgentRun::start_with(&hub, &enroll_token(&hub, "site=b").await, FAST_WINDOWS).unwrap();
    deploy_iris(&hub).await;
    wait_serving_iris(&a);
    wait_serving_iris(&b);
    // The readiness probes above are requests too: let their windows pass before counting.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let start = now_ms();

    // Both agents see what the model was trained on: no feature drifts.
    let (mut traffic_a, mut traffic_b) = (Traffic::new(1), Traffic::new(2));
    let sent = traffic_a.send(&a, 40, [0.0; 4]) + traffic_b.send(&b, 40, [0.0; 4]);
    let calm = wait_rows(&hub, &format!("since_ms={start}"), sent).await;
    assert_eq!(calm["devices"], 2, "{calm:#}");
    assert!(drifted(&calm).is_empty(), "{calm:#}");
    assert_eq!(calm["dataset_drift"], false, "{calm:#}");
    for feature in calm["features"].as_array().unwrap() {
        assert_eq!(feature["drifted"], false, "{calm:#}");
    }

    // From now on agent b sees longer sepals and petals; agent a does not change.
    let shift_at = now_ms();
    let sent = traffic_a.send(&a, 40, [0.0; 4]) + traffic_b.send(&b, 40, [1.5, 0.0, 2.5, 0.0]);
    let sent_by = now_ms();
    // Every window holding the shifted traffic closes at the next window boundary (2 s
    // windows, aligned to the clock): the report over windows ending by then names the drift.
    let first_boundary = (sent_by / 2000 + 1) * 2000;
    let fleet = wait_rows(
        &hub,
        &format!("since_ms={shift_at}&until_ms={first_boundary}"),
        sent,
    )
    .await;
    assert_eq!(
        drifted(&fleet),
        ["sepal_length", "petal_length"],
        "{fleet:#}"
    );
    assert_eq!(fleet["dataset_drift"], true, "two of four features is half");
    let only_b = report(&hub, &format!("since_ms={shift_at}&selector=site%3Db")).await;
    assert_eq!(
        drifted(&only_b),
        ["sepal_length", "petal_length"],
        "{only_b:#}"
    );
    let only_a = report(
        &hub,
        &format!("since_ms={shift_at}&devices={}", a.device_id),
    )
    .await;
    assert!(drifted(&only_a).is_empty(), "{only_a:#}");
    assert_eq!(only_a["devices"], 1);
    // The evaluator raises one alert event naming the features; /metrics carries the scores.
    let mut alert = serde_json::Value::Null;
    for _ in 0..100 {
        let events = hub
            .reader()
            .json(Method::GET, "/api/v1/events?model=iris", None)
            .await
            .unwrap();
        if let Some(event) = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "drift_alert")
        {
            alert = event.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        alert["detail"]["drifted_features"],
        json!(["sepal_length", "petal_length"]),
        "no drift alert: {alert:#}\n{}",
        hub.log()
    );
    let (_, metrics) = hub
        .reader()
        .request(Method::GET, "/metrics", "text/plain", Default::default())
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"flotilla_drift_score{model="iris",version="1",feature="petal_length",metric="wasserstein_sigma"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"flotilla_model_requests{model="iris",version="1"}"#));

    // The CLI prints the same report, health and events.
    let text = stdout(&hub.cli(
        Some(&hub.read_token),
        &[
            "drift",
            "report",
            "iris",
            "--since",
            "10m",
            "--selector",
            "site=b",
        ],
    ));
    let petal = text
        .lines()
        .find(|l| l.starts_with("petal_length"))
        .unwrap();
    assert!(petal.contains("DRIFT"), "{text}");
    let width = text.lines().find(|l| l.starts_with("petal_width")).unwrap();
    assert!(width.ends_with("ok"), "{text}");
    let health = stdout(&hub.cli(Some(&hub.read_token), &["health", "iris"]));
    assert!(
        health.lines().any(|l| l.trim_start().starts_with('1')),
        "{health}"
    );
    let events = stdout(&hub.cli(Some(&hub.read_token), &["events", "--model", "iris"]));
    assert!(
        events.contains("drift_alert") && events.contains("petal_length"),
        "{events}"
    );

    // Version 2 on site b only; its cohort compared with version 1's cohort over the same
    // time: b sends shifted traffic to 2, a unshifted traffic to 1.
    let v2 = hub.data_dir().join("iris_v2.onnx");
    std::fs::write(
        &v2,
        fixture_with_doc_string(
            "iris_classifier.onnx",
            "iris logistic regression, second push",
        ),
    )
    .unwrap();
    let out = hub.cli(
        Some(&hub.operator_token),
        &[
            "model",
            "push",
            "iris",
            v2.to_str().unwrap(),
            "--reference",
            fixture("iris_reference.csv").to_str().unwrap(),
        ],
    );
    assert!(stdout(&out).contains("version 2"));
    hub.operator()
        .json(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"model": "iris", "version": "2", "selector": "site=b"})),
        )
        .await
        .unwrap();
    for _ in 0..600 {
        if b.infer_rows("iris", &[[5.0, 3.4, 1.5, 0.2]]) == Ok(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let cohorts_at = now_ms();
    traffic_a.send(&a, 40, [0.0; 4]);
    traffic_b.send(&b, 40, [1.5, 0.0, 2.5, 0.0]);
    wait_rows_of(&hub, 2, &format!("since_ms={cohorts_at}"), 2000).await;
    wait_rows(&hub, &format!("since_ms={cohorts_at}"), 2000).await;
    let canary = report_of(&hub, 2, &format!("since_ms={cohorts_at}&against=version:1")).await;
    assert_eq!(canary["against"], "version:1");
    assert_eq!(
        drifted(&canary),
        ["sepal_length", "petal_length"],
        "{canary:#}"
    );
    assert_eq!(
        canary["features"][0]["reference_rows"], 2000,
        "the baseline is a's cohort on 1"
    );
    assert!(
        !canary["predictions"].as_array().unwrap().is_empty(),
        "predictions are compared between versions: {canary:#}"
    );
}

/// The reference sketch the hub exports is the DataSketches binary format: Python's
/// `datasketches` (installed in .cache/venv by deploy/setup.sh) reads it.
async fn python_datasketches_reads_the_reference(hub: &HubProcess) {
    let (status, sketch) = hub
        .reader()
        .request(
            Method::GET,
            "/api/v1/models/iris/versions/1/reference/features/petal_length",
            "application/json",
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let summary = hub
        .reader()
        .json(
            Method::GET,
            "/api/v1/models/iris/versions/1/reference",
            None,
        )
        .await
        .unwrap();
    let ours = summary["features"][2]["quantiles"][2].as_f64().unwrap();
    let file = hub.data_dir().join("petal_length.kll");
    std::fs::write(&file, &sketch).unwrap();
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv/bin/python");
    let output = std::process::Command::new(python)
        .args([
            "-c",
            "import sys, datasketches as ds; s = ds.kll_floats_sketch.deserialize(open(sys.argv[1], 'rb').read()); print(s.n, s.k, s.get_quantile(0.5, True))",
        ])
        .arg(&file)
        .output()
        .expect("the test venv (deploy/setup.sh)");
    let text = stdout(&output);
    let fields: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(fields[..2], ["3000", "1024"], "{text}");
    let median: f64 = fields[2].parse().unwrap();
    assert!(
        (median - ours).abs() < 1e-6,
        "python says {median}, the hub {ours}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_cut_off_under_traffic_delivers_every_window_exactly_once() {
    let proxy = TcpProxy::start();
    let hub = HubProcess::start_with(&format!(
        "[broker]\nadvertise = \"127.0.0.1:{}\"\n",
        proxy.port
    ));
    proxy.connect_to(hub.broker_port());
    push_iris_with_reference(&hub);
    let agent = AgentRun::start_with(
        &hub,
        &enroll_token(&hub, "site=boat").await,
        "[telemetry]\nwindow_seconds = 1\nreconnect_jitter_seconds = 0.5\ndrain_per_second = 50\n",
    )
    .unwrap();
    deploy_iris(&hub).await;
    wait_serving_iris(&agent);

    let mut traffic = Traffic::new(7);
    let mut requests = 0u64;
    let serve_for = |traffic: &mut Traffic, seconds: u64| {
        let until = std::time::Instant::now() + Duration::from_secs(seconds);
        let mut n = 0;
        while std::time::Instant::now() < until {
            traffic.send(&agent, 1, [0.0; 4]);
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    };
    requests += serve_for(&mut traffic, 2);
    proxy.unplug();
    // Offline: the device keeps serving; its windows wait in the spool.
    requests += serve_for(&mut traffic, 5);
    assert!(agent.metric("flotilla_agent_telemetry_spool_backlog") >= 3);
    proxy.plug();
    requests += serve_for(&mut traffic, 2);
    // Let the window holding the last request close (1 s windows, aligned to the clock),
    // then the spool drain.
    let last_request = now_ms();
    let closed = (last_request / 1000 + 1) * 1000 + 300;
    tokio::time::sleep(Duration::from_millis((closed - last_request) as u64)).await;
    let mut sealed = 0;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sealed = agent.metric("flotilla_agent_telemetry_windows_sealed_total");
        let acknowledged = agent.metric("flotilla_agent_telemetry_windows_acknowledged_total");
        if agent.metric("flotilla_agent_telemetry_spool_backlog") == 0
            && acknowledged >= sealed
            && sealed > 0
        {
            break;
        }
    }
    assert_eq!(
        agent.metric("flotilla_agent_telemetry_spool_backlog"),
        0,
        "{}",
        agent.log()
    );
    // The hub holds each window once, and the requests in them are every request served
    // (the readiness probes included: they are requests too, counted by the agent itself).
    let mut attempts = 0;
    let health = loop {
        attempts += 1;
        assert!(attempts < 300, "the hub never held all {sealed} windows");
        let h = hub
            .reader()
            .json(
                Method::GET,
                &format!("/api/v1/models/iris/health?devices={}", agent.device_id),
                None,
            )
            .await
            .unwrap();
        if h["versions"]["1"]["windows"].as_u64() == Some(sealed) {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let served_by_agent: u64 = {
        let (_, text) = agent.socket_request("GET", "/metrics", "").unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("flotilla_inference_requests_total{")
                    && l.contains("model=\"iris\",version=\"1\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    };
    let h = &health["versions"]["1"];
    assert_eq!(h["windows"].as_u64(), Some(sealed), "{health:#}");
    assert_eq!(h["requests"].as_u64(), Some(served_by_agent), "{health:#}");
    assert!(served_by_agent >= requests);
    assert_eq!(h["errors"], 0);
    assert_eq!(
        (h["spool_dropped"].as_u64(), h["spool_lost"].as_u64()),
        (Some(0), Some(0))
    );
}

fn numeric(values: &[f32]) -> Profile {
    let mut p = NumericProfile::new(DEVICE_K);
    values.iter().for_each(|&v| p.update(Some(v)));
    Profile::Numeric(p)
}

fn window(
    device: &str,
    version: u64,
    features: Vec<(&str, Profile)>,
    end_ms: i64,
    id: u8,
) -> WindowBatch {
    let mut latency = NumericProfile::new(DEVICE_K);
    latency.update(Some(0.3));
    WindowBatch {
        batch_id: [id; 16],
        device_id: device.into(),
        model: "iris".into(),
        version,
        window_start_ms: end_ms - 60_000,
        window_end_ms: end_ms,
        requests: 1,
        errors: BTreeMap::new(),
        latency_ms: latency,
        features: features
            .into_iter()
            .map(|(name, profile)| NamedProfile {
                name: name.into(),
                profile,
            })
            .collect(),
        predictions: vec![],
        spool_dropped_total: 0,
        spool_lost_total: 0,
        captures: vec![],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_telemetry_is_refused_by_reason_and_nothing_good_is_lost() {
    let hub = HubProcess::start();
    push_iris_with_reference(&hub);
    let (device, key) = enrolled_device(&hub, "site=lab").await;
    let now = now_ms();
    let good = |id: u8, values: &[f32]| {
        window(
            &device,
            1,
            FEATURES.iter().map(|f| (*f, numeric(values))).collect(),
            now,
            id,
        )
    };
    let valid = seal_frame(&good(1, &[5.0, 5.5, 6.0]), &key);
    let with_nan = seal_frame(
        &good(2, &[5.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 6.0]),
        &key,
    );
    let stranger = SigningKey::generate().unwrap();
    let mut flipped = seal_frame(&good(3, &[1.0]), &key);
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    let mut future_profile = good(9, &[1.0]).encode();
    let at = future_profile
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"FLSK")
        .nth(1)
        .unwrap()
        .0;
    future_profile[at + 4] = 99;
    let mut categorical = CategoricalProfile::new();
    categorical.update(Some("x"));
    let wrong_kind = {
        let mut w = good(10, &[1.0]);
        w.features[1].profile = Profile::Categorical(categorical);
        w
    };
    let coarse = {
        let mut w = good(13, &[1.0]);
        let mut p = NumericProfile::new(8);
        p.update(Some(1.0));
        w.features[0].profile = Profile::Numeric(p);
        w
    };
    let three_features = window(
        &device,
        1,
        FEATURES[..3]
            .iter()
            .map(|f| (*f, numeric(&[1.0])))
            .collect(),
        now,
        11,
    );
    let frames: Vec<(&str, String, Vec<u8>)> = vec![
        ("valid", device.clone(), valid.clone()),
        ("duplicate", device.clone(), valid.clone()),
        ("nan", device.clone(), with_nan),
        ("truncated header", device.clone(), valid[..30].to_vec()),
        (
            "truncated body",
            device.clone(),
            valid[..valid.len() - 10].to_vec(),
        ),
        ("garbage", device.clone(), b"not a frame at all".to_vec()),
        (
            "bad signature",
            device.clone(),
            seal_frame(&good(4, &[1.0]), &stranger),
        ),
        ("flipped", device.clone(), flipped),
        (
            "unknown device",
            "dev-nobody".into(),
            seal_frame(&window("dev-nobody", 1, vec![], now, 5), &stranger),
        ),
        (
            "unknown version",
            device.clone(),
            seal_frame(&window(&device, 7, vec![], now, 6), &key),
        ),
        ("future profile", device.clone(), {
            // Re-sealed by hand: the batch bytes were edited after encoding.
            seal_raw(&device, &future_profile, &key)
        }),
        ("wrong kind", device.clone(), seal_frame(&wrong_kind, &key)),
        ("another k", device.clone(), seal_frame(&coarse, &key)),
        (
            "three features",
            device.clone(),
            seal_frame(&three_features, &key),
        ),
        (
            "replayed days later",
            device.clone(),
            seal_frame(&window(&device, 1, vec![], now - 40 * 86_400_000, 12), &key),
        ),
    ];
    // As the hub's own identity, the one client the broker lets publish on any device's
    // topic: the hub's checks, not the broker's, are under test here.
    let mut publisher = MqttPeer::connect(
        &hub,
        "flotilla-hub-test-publisher",
        crate::mqtt_peer::hub_identity(&hub),
    );
    publisher.connected().await.unwrap();
    for (what, topic_device, frame) in &frames {
        publisher
            .publish(
                &flotilla_proto::telemetry::topics::telemetry(topic_device),
                false,
                frame.clone(),
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    let expected = [
        ("malformed", 2),
        ("bad_signature", 3),
        ("unknown_device", 1),
        ("unknown_version", 1),
        ("bad_sketch", 1),
        ("sketch_kind", 2),
        ("feature_mismatch", 1),
        ("stale", 1),
    ];
    let mut metrics = String::new();
    for _ in 0..100 {
        let (_, body) = hub
            .reader()
            .request(Method::GET, "/metrics", "text/plain", Default::default())
            .await
            .unwrap();
        metrics = String::from_utf8_lossy(&body).into_owned();
        let all = expected.iter().all(|(reason, n)| {
            metrics.contains(&format!(
                "flotilla_hub_telemetry_rejected_total{{reason=\"{reason}\"}} {n}\n"
            ))
        });
        if all && metrics.contains("flotilla_hub_telemetry_windows_stored_total 2\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (reason, n) in expected {
        assert!(
            metrics.contains(&format!(
                "flotilla_hub_telemetry_rejected_total{{reason=\"{reason}\"}} {n}\n"
            )),
            "{reason} x{n} missing:\n{metrics}"
        );
    }
    // Stored: the valid frame (once; its second delivery counted as a duplicate) and the one
    // with NaN and infinities.
    assert!(
        metrics.contains("flotilla_hub_telemetry_windows_stored_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_hub_telemetry_duplicates_total 1\n"),
        "{metrics}"
    );
    // NaN and infinities were counted as missing, not merged into the distribution.
    let r = report(&hub, &format!("devices={device}")).await;
    let first = &r["features"][0];
    assert_eq!(first["current_rows"], 3 + 2, "{r:#}");
    assert_eq!(first["current_missing"], 3, "{r:#}");
    // The hub is still up and answering.
    let (status, _) = hub
        .reader()
        .request(Method::GET, "/healthz", "text/plain", Default::default())
        .await
        .unwrap();
    assert_eq!(status, 200);
}

/// Seals already-encoded batch bytes (for batches edited after encoding).
fn seal_raw(device: &str, encoded: &[u8], key: &SigningKey) -> Vec<u8> {
    let batch = WindowBatch::decode(encoded);
    assert!(batch.is_err(), "the edit must make the batch invalid");
    // Build the frame the way seal_frame does, around the edited bytes.
    let compressed = flotilla_common::compression::compress(encoded).unwrap();
    let mut message = b"flotilla telemetry frame v1\0".to_vec();
    message.extend_from_slice(device.as_bytes());
    message.push(0);
    message.extend_from_slice(&compressed);
    let signature = hex::decode(key.sign_bytes(&message)).unwrap();
    let mut frame = b"FLTF\x01".to_vec();
    frame.extend_from_slice(&(device.len() as u16).to_le_bytes());
    frame.extend_from_slice(device.as_bytes());
    frame.extend_from_slice(&signature);
    frame.extend_from_slice(&compressed);
    frame
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_spool_on_the_device_is_replaced_and_the_loss_reported() {
    let hub = HubProcess::start();
    push_iris_with_reference(&hub);
    let config = format!("{FAST_WINDOWS}[telemetry.capture.iris]\nper_minute = 60\n");
    let mut agent =
        AgentRun::start_with(&hub, &enroll_token(&hub, "site=x").await, &config).unwrap();
    deploy_iris(&hub).await;
    wait_serving_iris(&agent);
    agent.kill_9();
    let spool = agent.dir.path().join("state/telemetry-spool.db");
    std::fs::write(&spool, vec![0x42u8; 16384]).unwrap();
    let _ = std::fs::remove_file(agent.dir.path().join("state/telemetry-spool.db-wal"));
    agent.restart().unwrap();
    wait_serving_iris(&agent);
    assert_eq!(agent.metric("flotilla_agent_telemetry_spool_lost_total"), 1);
    Traffic::new(3).send(&agent, 5, [0.0; 4]);
    let mut heard = false;
    for _ in 0..300 {
        let r = report(&hub, &format!("devices={}", agent.device_id)).await;
        if r["spool_lost"] == 1 {
            heard = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        heard,
        "the hub never heard of the lost spool:\n{}",
        agent.log()
    );

    // Data capture was on for iris: 60 a minute is 2 per 2-second window, 50 rows each.
    let csv = hub.data_dir().join("capture.csv");
    let text = stdout(&hub.cli(
        Some(&hub.read_token),
        &[
            "capture",
            "export",
            "iris",
            "--version",
            "1",
            "--out",
            csv.to_str().unwrap(),
        ],
    ));
    assert!(text.contains("csv"), "{text}");
    let exported = std::fs::read_to_string(&csv).unwrap();
    let mut lines = exported.lines();
    assert_eq!(
        lines.next().unwrap(),
        "device_id,at_ms,sepal_length,sepal_width,petal_length,petal_width,outputs"
    );
    let rows = lines.count();
    assert!(rows >= 50 && rows % 50 <= 1, "{rows} rows:\n{exported}");
    let ndjson = hub.data_dir().join("capture.ndjson");
    stdout(&hub.cli(
        Some(&hub.read_token),
        &[
            "capture",
            "export",
            "iris",
            "--version",
            "1",
            "--out",
            ndjson.to_str().unwrap(),
        ],
    ));
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&ndjson)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["device_id"], agent.device_id.as_str());
    assert!(first["outputs"]["label"].is_array(), "{first}");
}

#[test]
fn profile_prints_a_local_table_without_a_hub() {
    let output = std::process::Command::new(flotilla_testkit::workspace_binary("flotilla"))
        .args(["--hub", "http://127.0.0.1:9", "profile"])
        .arg(fixture("iris_reference.csv"))
        .output()
        .unwrap();
    let text = stdout(&output);
    assert!(text.contains("3000 rows, 4 columns"), "{text}");
    let petal = text
        .lines()
        .find(|l| l.starts_with("petal_length"))
        .unwrap();
    assert!(
        petal.contains("numeric") && petal.contains("3000"),
        "{text}"
    );
    let missing = std::process::Command::new(flotilla_testkit::workspace_binary("flotilla"))
        .args(["profile", "/nonexistent.csv"])
        .output()
        .unwrap();
    assert!(stderr_of_failure(&missing).contains("/nonexistent.csv"));
}

#[tokio::test(flavor = "multi_thread")]
async fn feature_maps_at_push_are_checked_against_the_model() {
    let hub = HubProcess::start();
    let model = std::fs::read(fixture("iris_classifier.onnx")).unwrap();
    let push = |query: &'static str| {
        let (operator, model) = (hub.operator(), model.clone());
        async move {
            operator
                .upload(
                    &format!("/api/v1/models/iris/versions?{query}"),
                    model.into(),
                )
                .await
        }
    };
    for (query, message) in [
        (
            "features=a,b,c",
            "3 feature names given but input \"float_input\" has 4 columns",
        ),
        ("features=a,a,b,c", "distinct"),
        ("feature_input=nope", "no input \"nope\""),
        ("predictions=nope", "no output \"nope\""),
        (
            "features=a,b,c,d&categorical=z",
            "categorical feature \"z\"",
        ),
    ] {
        let error = push(query).await.unwrap_err().to_string();
        assert!(
            error.contains("422") && error.contains(message),
            "{query}: {error}"
        );
    }
    push("features=a,b,c,d&categorical=d&predictions=label&feature_input=float_input")
        .await
        .unwrap();
    let envelope = hub
        .reader()
        .json(Method::GET, "/api/v1/models/iris/versions/1/manifest", None)
        .await
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(envelope["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        manifest["features"],
        json!({"input": "float_input", "features": ["a", "b", "c", "d"], "categorical": ["d"],
               "predictions": [{"output": "label", "kind": "class"}]})
    );
    // A reference that lacks the version's features is refused with the names.
    let reference = flotilla_common::telemetry::encode_reference(1, &[]);
    let error = hub
        .operator()
        .put_bytes("/api/v1/models/iris/versions/1/reference", reference.into())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("422") && error.contains("no feature \"a\""),
        "{error}"
    );
    let junk = hub
        .operator()
        .put_bytes(
            "/api/v1/models/iris/versions/1/reference",
            b"junk".to_vec().into(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(junk.contains("not a reference profile set"), "{junk}");
    // Read-only tokens cannot store references or thresholds.
    let denied = hub
        .reader()
        .put_bytes(
            "/api/v1/models/iris/versions/1/reference",
            b"x".to_vec().into(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(denied.contains("403"), "{denied}");
    let bad = hub
        .operator()
        .json(
            Method::PUT,
            "/api/v1/models/iris/drift-thresholds",
            Some(json!({"default": {"kss": 0.2}})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(bad.contains("400") && bad.contains("kss"), "{bad}");
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_keep_last_seen_current() {
    let hub = HubProcess::start();
    let agent = AgentRun::start_with(
        &hub,
        &enroll_token(&hub, "site=beat").await,
        "heartbeat_seconds = 1\n",
    )
    .unwrap();
    let last_seen = || async {
        hub.reader()
            .json(
                Method::GET,
                &format!("/api/v1/devices/{}", agent.device_id),
                None,
            )
            .await
            .unwrap()["last_seen"]
            .as_i64()
    };
    let mut first = None;
    for _ in 0..100 {
        first = last_seen().await;
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.expect("the device was seen");
    // Let start-up messages (status, first report) pass; from then on nothing else happens
    // on this device, so only heartbeats can move last_seen on.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let first = last_seen().await.unwrap();
    let mut later = first;
    for _ in 0..100 {
        later = last_seen().await.unwrap();
        if later > first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(later > first, "last_seen stayed at {first}");
}
