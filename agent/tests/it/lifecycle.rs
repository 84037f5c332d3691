//! The agent as a daemon: socket handling, graceful shutdown with requests in flight, hot
//! swaps of model versions under load, reload triggers and back-pressure.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn busy_request(size: i64) -> serde_json::Value {
    json!({"inputs": [{"name": "size", "shape": [2], "datatype": "INT64", "data": [size, size]}]})
}

async fn gauge(endpoint: &Endpoint, series: &str) -> u64 {
    let text = String::from_utf8(get(endpoint, "/metrics").await.body).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn in_flight(endpoint: &Endpoint) -> u64 {
    gauge(endpoint, "flotilla_inference_in_flight ").await
}

async fn wait_for_gauge(endpoint: &Endpoint, series: &str, value: u64) {
    for _ in 0..1000 {
        if gauge(endpoint, series).await >= value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{series} never reached {value}");
}

async fn wait_for_in_flight(endpoint: &Endpoint, count: u64) {
    for _ in 0..500 {
        if in_flight(endpoint).await >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never saw {count} requests in flight");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_removes_the_socket() {
    let mut agent = AgentProcess::start(&[("busy", &fixture("busy.onnx"))], &[]);
    let socket = agent.unix();
    // Long enough (seconds) that it is surely still running when SIGTERM arrives.
    let size = 4000;
    let slow = tokio::spawn(async move {
        post_json(&socket, "/v2/models/busy/infer", &busy_request(size)).await
    });
    wait_for_in_flight(&agent.tcp(), 1).await;
    agent.signal("TERM");
    let response = match slow.await {
        Ok(response) => response,
        Err(error) => panic!(
            "the in-flight request failed: {error}\nagent log:\n{}",
            agent.log()
        ),
    };
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let total = response.json()["outputs"][0]["data"][0].as_f64().unwrap();
    let exact = (size as f64).powi(3);
    // f32 accumulation over millions of terms: close, not exact.
    assert!((total - exact).abs() / exact < 2e-2, "{total} vs {exact}");
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert!(!agent.socket.exists(), "socket file removed on shutdown");
    assert!(agent.log().contains("finishing in-flight requests"));
}

#[tokio::test]
async fn socket_paths_are_checked_before_serving() {
    let iris = fixture("iris_classifier.onnx");
    let model = format!("iris={}", iris.display());

    let (status, stderr) = start_failure(&[
        "serve",
        "--model",
        &model,
        "--socket",
        "/nonexistent-folder/agent.sock",
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("socket folder /nonexistent-folder does not exist"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.sock");
    std::fs::write(&file, "precious data").unwrap();
    let (_, stderr) = start_failure(&[
        "serve",
        "--model",
        &model,
        "--socket",
        file.to_str().unwrap(),
    ]);
    assert!(stderr.contains("exists and is not a socket"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "precious data",
        "a regular file is never clobbered"
    );

    // A stale socket (its server is gone) is replaced; the new agent serves on it.
    let stale_dir = tempfile::tempdir().unwrap();
    let stale = stale_dir.path().join("agent.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let agent = AgentProcess::start_in(stale_dir, &[("iris", &iris)], &[]).unwrap();
    assert_eq!(get(&agent.unix(), "/v2/health/ready").await.status, 200);
    assert!(agent.log().contains("removing stale socket"));
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);

    // A live socket belongs to another agent: refused, and the running agent is untouched.
    let (status, stderr) = start_failure(&[
        "serve",
        "--model",
        &model,
        "--socket",
        agent.socket.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("another process is serving on socket"),
        "{stderr}"
    );
    assert_eq!(get(&agent.unix(), "/v2/health/live").await.status, 200);
}

fn install_version(models: &Path, version: u64, fixture_name: &str) {
    // Write beside, then rename: a version folder appears whole or not at all.
    let staging = models.join(format!(".staging-{version}"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::copy(fixture(fixture_name), staging.join("model.onnx")).unwrap();
    std::fs::rename(&staging, models.join(version.to_string())).unwrap();
}

#[tokio::test]
async fn hot_swap_under_load_loses_no_request_and_mixes_no_versions() {
    let models = tempfile::tempdir().unwrap();
    install_version(models.path(), 1, "scaler_v1.onnx");
    let agent = AgentProcess::start(&[("scaler", models.path())], &["--sessions", "2"]);
    let endpoint = agent.unix();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (endpoint, stop) = (endpoint.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let x = (client * 1000 + n) as f64;
                let request = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [x]}]});
                let started = std::time::Instant::now();
                let response = post_json(&endpoint, "/v2/models/scaler/infer", &request).await;
                assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.body));
                let body = response.json();
                let version: u64 = body["model_version"].as_str().unwrap().parse().unwrap();
                let y = body["outputs"][0]["data"][0].as_f64().unwrap();
                assert_eq!(y, x * version as f64, "version {version} must compute x * {version}");
                seen.push((started, version));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    install_version(models.path(), 2, "scaler_v2.onnx");
    let load = send(
        &endpoint,
        "POST",
        "/v2/repository/models/scaler/load",
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(load.status, 200, "{}", String::from_utf8_lossy(&load.body));
    assert_eq!(load.json()["loaded"], json!(["2"]));
    let swapped_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut before = 0;
    let mut after = 0;
    for client in clients {
        for (at, version) in client.await.unwrap() {
            if at > swapped_at {
                // A request sent after the swap call returned must see the new version.
                assert_eq!(version, 2, "old version served after the swap");
                after += 1;
            } else {
                before += 1;
            }
        }
    }
    assert!(
        before > 10 && after > 10,
        "{before} requests before the swap, {after} after"
    );
    let metadata = get(&endpoint, "/v2/models/scaler").await.json();
    assert_eq!(metadata["versions"], json!(["1", "2"]));
}

#[tokio::test]
async fn a_half_written_version_is_not_served_until_it_is_whole() {
    let models = tempfile::tempdir().unwrap();
    install_version(models.path(), 1, "scaler_v1.onnx");
    let agent = AgentProcess::start(&[("scaler", models.path())], &[]);
    let endpoint = agent.unix();
    let bytes = std::fs::read(fixture("scaler_v2.onnx")).unwrap();
    std::fs::create_dir(models.path().join("2")).unwrap();
    std::fs::write(
        models.path().join("2/model.onnx"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let load = send(
        &endpoint,
        "POST",
        "/v2/repository/models/scaler/load",
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(load.status, 400);
    assert!(load.error().contains("2/model.onnx"), "{}", load.error());
    let request = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [3]}]});
    let body = post_json(&endpoint, "/v2/models/scaler/infer", &request)
        .await
        .json();
    assert_eq!(
        (
            body["model_version"].as_str(),
            body["outputs"][0]["data"][0].as_f64()
        ),
        (Some("1"), Some(3.0))
    );
    let index = send(&endpoint, "POST", "/v2/repository/index", &[], Vec::new())
        .await
        .json();
    assert!(
        index
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["version"] == "2" && e["state"] == "UNAVAILABLE"),
        "{index}"
    );

    std::fs::write(models.path().join("2/model.onnx"), &bytes).unwrap();
    let load = send(
        &endpoint,
        "POST",
        "/v2/repository/models/scaler/load",
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(load.status, 200, "{}", String::from_utf8_lossy(&load.body));
    let body = post_json(&endpoint, "/v2/models/scaler/infer", &request)
        .await
        .json();
    assert_eq!(
        (
            body["model_version"].as_str(),
            body["outputs"][0]["data"][0].as_f64()
        ),
        (Some("2"), Some(6.0))
    );

    // Removing a version folder unloads it; the model keeps its remaining version.
    std::fs::remove_dir_all(models.path().join("2")).unwrap();
    let load = send(
        &endpoint,
        "POST",
        "/v2/repository/models/scaler/load",
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(load.json()["unloaded"], json!(["2"]));
    let body = post_json(&endpoint, "/v2/models/scaler/infer", &request)
        .await
        .json();
    assert_eq!(body["model_version"], "1");
}

async fn wait_for_versions(endpoint: &Endpoint, versions: serde_json::Value) {
    for _ in 0..300 {
        if get(endpoint, "/v2/models/scaler").await.json()["versions"] == versions {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("versions never became {versions}");
}

#[tokio::test]
async fn new_versions_are_picked_up_by_polling_and_by_sighup() {
    let models = tempfile::tempdir().unwrap();
    install_version(models.path(), 1, "scaler_v1.onnx");
    let config_dir = tempfile::tempdir().unwrap();
    let polling = config_dir.path().join("polling.toml");
    std::fs::write(&polling, "watch_interval_ms = 100\n").unwrap();
    let agent = AgentProcess::start(
        &[("scaler", models.path())],
        &["--config", polling.to_str().unwrap()],
    );
    install_version(models.path(), 2, "scaler_v2.onnx");
    wait_for_versions(&agent.unix(), json!(["1", "2"])).await;
    drop(agent);

    let manual = config_dir.path().join("manual.toml");
    std::fs::write(&manual, "watch_interval_ms = 0\n").unwrap();
    let agent = AgentProcess::start(
        &[("scaler", models.path())],
        &["--config", manual.to_str().unwrap()],
    );
    install_version(models.path(), 3, "scaler_v1.onnx");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&agent.unix(), "/v2/models/scaler").await.json()["versions"],
        json!(["1", "2"]),
        "no polling"
    );
    agent.signal("HUP");
    wait_for_versions(&agent.unix(), json!(["1", "2", "3"])).await;
}

#[tokio::test]
async fn a_full_queue_is_refused_at_once_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let busy = fixture("busy.onnx");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nname = \"busy\"\npath = \"{}\"\nsessions = 1\nqueue_depth = 1\n",
            busy.display()
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&[], &["--config", config.to_str().unwrap()]);
    let endpoint = agent.unix();
    let first = tokio::spawn({
        let endpoint = endpoint.clone();
        async move { post_json(&endpoint, "/v2/models/busy/infer", &busy_request(4000)).await }
    });
    wait_for_in_flight(&agent.tcp(), 1).await;
    let second = tokio::spawn({
        let endpoint = endpoint.clone();
        async move { post_json(&endpoint, "/v2/models/busy/infer", &busy_request(10)).await }
    });
    // The second holds the one queue place once it waits for the session the first holds.
    wait_for_gauge(
        &agent.tcp(),
        "flotilla_inference_waiting{model=\"busy\",version=\"1\"}",
        1,
    )
    .await;
    let third = post_json(&endpoint, "/v2/models/busy/infer", &busy_request(10)).await;
    assert_eq!(
        third.status,
        503,
        "{}",
        String::from_utf8_lossy(&third.body)
    );
    assert!(third.error().contains("queue_depth"), "{}", third.error());
    assert_eq!(first.await.unwrap().status, 200);
    let second = second.await.unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(
        second.json()["outputs"][0]["data"][0].as_f64(),
        Some(1000.0)
    );
    assert_eq!(
        gauge(
            &agent.tcp(),
            "flotilla_inference_waiting{model=\"busy\",version=\"1\"}"
        )
        .await,
        0
    );
}

/// A client that gives up while its run is on the blocking pool must not cost the model its
/// session: the run ends, the session returns, later requests are served.
#[tokio::test]
async fn a_client_that_disconnects_mid_run_does_not_lose_the_session() {
    let agent = AgentProcess::start(&[("busy", &fixture("busy.onnx"))], &["--sessions", "1"]);
    let endpoint = agent.unix();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        post_json(&endpoint, "/v2/models/busy/infer", &busy_request(3000)),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the client gave up before the run ended"
    );
    for _ in 0..3 {
        let response = post_json(&endpoint, "/v2/models/busy/infer", &busy_request(10)).await;
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
    }
    // A waiter that gives up does not keep its queue place either.
    let slow = tokio::spawn({
        let endpoint = endpoint.clone();
        async move { post_json(&endpoint, "/v2/models/busy/infer", &busy_request(3000)).await }
    });
    wait_for_in_flight(&agent.tcp(), 1).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        post_json(&endpoint, "/v2/models/busy/infer", &busy_request(10)),
    )
    .await;
    assert!(gave_up.is_err());
    assert_eq!(slow.await.unwrap().status, 200);
    wait_for_gauge(&agent.tcp(), "flotilla_inference_in_flight ", 0).await;
    assert_eq!(
        gauge(
            &agent.tcp(),
            "flotilla_inference_waiting{model=\"busy\",version=\"1\"}"
        )
        .await,
        0
    );
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

/// Two slow runs on two sessions run side by side, and the server still answers meanwhile:
/// a model that was fast until now cannot stall the async runtime.
#[tokio::test]
async fn slow_runs_do_not_stall_the_server() {
    let agent = AgentProcess::start(&[("busy", &fixture("busy.onnx"))], &["--sessions", "2"]);
    let endpoint = agent.unix();
    for _ in 0..30 {
        assert_eq!(
            post_json(&endpoint, "/v2/models/busy/infer", &busy_request(8))
                .await
                .status,
            200
        );
    }
    // Runs long enough (6000^3 multiply-adds each) to overlap on a loaded 2-core machine,
    // where a shorter one could end before the other starts.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                post_json(&endpoint, "/v2/models/busy/infer", &busy_request(6000)).await
            })
        })
        .collect();
    wait_for_in_flight(&agent.tcp(), 2).await;
    assert_eq!(get(&agent.tcp(), "/v2/health/live").await.status, 200);
    assert_eq!(
        in_flight(&agent.tcp()).await,
        2,
        "both slow runs were still going while the server answered"
    );
    assert_eq!(
        gauge(
            &agent.tcp(),
            "flotilla_inference_waiting{model=\"busy\",version=\"1\"}"
        )
        .await,
        0,
        "they run side by side"
    );
    for task in slow {
        assert_eq!(task.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn metrics_count_requests_and_latency_per_model_and_version() {
    let agent = AgentProcess::start(&[("scaler", &fixture("scaler_v1.onnx"))], &[]);
    let request = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]});
    for _ in 0..3 {
        assert_eq!(
            post_json(&agent.unix(), "/v2/models/scaler/infer", &request)
                .await
                .status,
            200
        );
    }
    let response = get(&agent.tcp(), "/metrics").await;
    assert!(
        response.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(response.body).unwrap();
    assert!(
        text.contains("flotilla_inference_requests_total{model=\"scaler\",version=\"1\"} 3"),
        "{text}"
    );
    assert!(
        text.contains(
            "flotilla_inference_duration_seconds_count{model=\"scaler\",version=\"1\"} 3"
        ),
        "{text}"
    );
    assert!(text.contains("flotilla_inference_duration_seconds_bucket{model=\"scaler\",version=\"1\",le=\"+Inf\"} 3"), "{text}");
}

/// The socket and the TCP port share one connection cap: past it a connection is answered
/// 503 with a JSON error and closed, and the refusal counted; a freed place serves again.
#[tokio::test]
async fn connections_past_the_cap_are_refused_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "max_connections = 2\n").unwrap();
    let iris = fixture("iris_classifier.onnx");
    let agent = AgentProcess::start(&[("iris", &iris)], &["--config", config.to_str().unwrap()]);
    // Held on the TCP port, whose accepts come in connection order, so both are in before
    // any probe (a probe accepted first would take a place and a held one be refused).
    let address = match agent.tcp() {
        Endpoint::Tcp(address) => address,
        other => panic!("{other:?}"),
    };
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(address).unwrap())
        .collect();
    let mut refused = None;
    for _ in 0..100 {
        let answer = get(&agent.tcp(), "/v2/health/live").await;
        if answer.status == 503 {
            refused = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a connection past the cap is refused");
    assert!(
        refused.error().contains("limit of 2 open connections"),
        "{}",
        refused.error()
    );
    // The socket shares the cap.
    assert_eq!(get(&agent.unix(), "/v2/health/live").await.status, 503);
    drop(held);
    let mut metrics = None;
    for _ in 0..100 {
        let answer = get(&agent.tcp(), "/metrics").await;
        if answer.status == 200 {
            metrics = Some(String::from_utf8_lossy(&answer.body).into_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = metrics.expect("served again once places are free");
    assert!(
        metrics.contains("flotilla_agent_connections_limit 2")
            && !metrics.contains("flotilla_agent_connections_refused_total 0\n"),
        "{metrics}"
    );
}
