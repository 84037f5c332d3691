//! Every bad input the issue lists gets a clear 4xx `{"error": ...}` (or a clear start-up
//! error naming the file), and the agent keeps serving afterwards.

use serde_json::json;

use crate::support::*;

fn multi_request() -> serde_json::Value {
    json!({"inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
        {"name": "b", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}
    ]})
}

async fn expect_error(response: Response, status: u16, needles: &[&str]) {
    assert_eq!(
        response.status,
        status,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let message = response.error();
    for needle in needles {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
}

#[tokio::test]
async fn request_errors_are_answered_and_the_agent_keeps_serving() {
    let agent = AgentProcess::start(
        &[
            ("multi", &fixture("multi_io.onnx")),
            ("scaler", &fixture("scaler_v1.onnx")),
            ("text", &fixture("text_lookup.onnx")),
        ],
        &["--max-body-bytes", "4096"],
    );
    let socket = agent.unix();
    let infer = "/v2/models/multi/infer";

    expect_error(
        post_json(&socket, "/v2/models/nope/infer", &multi_request()).await,
        404,
        &["unknown model \"nope\""],
    )
    .await;
    expect_error(
        post_json(
            &socket,
            "/v2/models/multi/versions/7/infer",
            &multi_request(),
        )
        .await,
        404,
        &["no version \"7\"", "versions 1"],
    )
    .await;
    expect_error(
        get(&socket, "/v2/models/nope").await,
        404,
        &["unknown model"],
    )
    .await;
    expect_error(get(&socket, "/v3/other").await, 404, &["/v2"]).await;
    // Every error is JSON: a wrong method, and a path that is not valid UTF-8.
    expect_error(get(&socket, infer).await, 405, &["GET is not allowed"]).await;
    expect_error(
        send(&socket, "POST", "/v2/health/live", &[], Vec::new()).await,
        405,
        &["not allowed"],
    )
    .await;
    expect_error(
        get(&socket, "/v2/models/%FF/ready").await,
        400,
        &["bad path"],
    )
    .await;

    let mut missing = multi_request();
    missing["inputs"].as_array_mut().unwrap().pop();
    expect_error(
        post_json(&socket, infer, &missing).await,
        400,
        &["missing input b", "takes a, b"],
    )
    .await;

    let mut extra = multi_request();
    extra["inputs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "c", "shape": [1], "datatype": "FP32", "data": [1]}));
    expect_error(
        post_json(&socket, infer, &extra).await,
        400,
        &["unknown input \"c\""],
    )
    .await;

    let mut twice = multi_request();
    twice["inputs"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}));
    expect_error(
        post_json(&socket, infer, &twice).await,
        400,
        &["given twice"],
    )
    .await;

    let mut wrong_type = multi_request();
    wrong_type["inputs"][1]["datatype"] = json!("INT32");
    expect_error(
        post_json(&socket, infer, &wrong_type).await,
        400,
        &["datatype is INT32 but the model takes INT64"],
    )
    .await;
    wrong_type["inputs"][1]["datatype"] = json!("FLOAT");
    expect_error(
        post_json(&socket, infer, &wrong_type).await,
        400,
        &["\"FLOAT\" is not an Open Inference Protocol datatype"],
    )
    .await;

    let mut bad_value = multi_request();
    bad_value["inputs"][1]["data"] = json!([1, 2.5, 3]);
    expect_error(
        post_json(&socket, infer, &bad_value).await,
        400,
        &["element 1 is 2.5", "INT64"],
    )
    .await;

    let mut short = multi_request();
    short["inputs"][0]["data"] = json!([1, 2]);
    expect_error(
        post_json(&socket, infer, &short).await,
        400,
        &["data has 2 elements but shape [1, 3] needs 3"],
    )
    .await;

    let mut incompatible = multi_request();
    incompatible["inputs"][0]["shape"] = json!([3, 1]);
    expect_error(
        post_json(&socket, infer, &incompatible).await,
        400,
        &["shape [3, 1] does not fit the model's [-1, 3]"],
    )
    .await;
    incompatible["inputs"][0]["shape"] = json!([3]);
    expect_error(
        post_json(&socket, infer, &incompatible).await,
        400,
        &["does not fit"],
    )
    .await;
    incompatible["inputs"][0]["shape"] = json!([-1, 3]);
    expect_error(
        post_json(&socket, infer, &incompatible).await,
        400,
        &["negative dimension"],
    )
    .await;

    let mut unknown_output = multi_request();
    unknown_output["outputs"] = json!([{"name": "nothing"}]);
    expect_error(
        post_json(&socket, infer, &unknown_output).await,
        400,
        &["unknown output \"nothing\"", "sum, b_times_two, a_mean"],
    )
    .await;

    let mut no_data = multi_request();
    no_data["inputs"][0].as_object_mut().unwrap().remove("data");
    expect_error(
        post_json(&socket, infer, &no_data).await,
        400,
        &["has no \"data\""],
    )
    .await;

    let json_headers = [("content-type", "application/json".to_owned())];
    let not_json = send(
        &socket,
        "POST",
        infer,
        &json_headers,
        b"inputs: a=1".to_vec(),
    )
    .await;
    expect_error(not_json, 400, &["not a valid inference request"]).await;
    let full = serde_json::to_vec(&multi_request()).unwrap();
    let truncated = send(
        &socket,
        "POST",
        infer,
        &json_headers,
        full[..full.len() / 2].to_vec(),
    )
    .await;
    expect_error(truncated, 400, &["EOF"]).await;
    // JSON has no NaN: a client that writes one sends invalid JSON.
    let nan = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[NaN]}]}"#.to_vec();
    expect_error(
        send(
            &socket,
            "POST",
            "/v2/models/scaler/infer",
            &json_headers,
            nan,
        )
        .await,
        400,
        &["not a valid inference request"],
    )
    .await;

    // Binary extension errors.
    let header = json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]});
    let header_bytes = serde_json::to_vec(&header).unwrap();
    let beyond = [(
        "inference-header-content-length",
        (header_bytes.len() + 100).to_string(),
    )];
    let mut body = header_bytes.clone();
    body.extend_from_slice(&[0; 8]);
    expect_error(
        send(&socket, "POST", "/v2/models/scaler/infer", &beyond, body).await,
        400,
        &["Inference-Header-Content-Length is", "only"],
    )
    .await;
    expect_error(
        post_binary(&socket, "/v2/models/scaler/infer", &header, &[vec![0; 4]]).await,
        400,
        &["binary_data_size is 8 but only 4 bytes"],
    )
    .await;
    expect_error(
        post_binary(&socket, "/v2/models/scaler/infer", &header, &[vec![0; 12]]).await,
        400,
        &["4 bytes of binary data follow the inputs"],
    )
    .await;
    let odd = json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 6}}]});
    expect_error(
        post_binary(&socket, "/v2/models/scaler/infer", &odd, &[vec![0; 6]]).await,
        400,
        &["binary data is 6 bytes but shape [2] of FP32 needs 8"],
    )
    .await;
    let bytes_header = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]});
    expect_error(
        post_binary(
            &socket,
            "/v2/models/text/infer",
            &bytes_header,
            &[vec![2, 0, 0, 0, 0xff, 0xfe]],
        )
        .await,
        400,
        &["not valid UTF-8"],
    )
    .await;

    // NaN and infinity cannot go back as JSON: a clear error that says how to get them.
    let nan_header = json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]});
    let nan_bytes: Vec<u8> = [1.0f32, f32::NAN]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    expect_error(
        post_binary(
            &socket,
            "/v2/models/scaler/infer",
            &nan_header,
            &[nan_bytes],
        )
        .await,
        400,
        &["output \"y\"", "element 1 is NaN", "binary_data"],
    )
    .await;

    // Over the body limit.
    let big = json!({"inputs": [{"name": "x", "shape": [2000], "datatype": "FP32", "data": vec![1.5; 2000]}]});
    expect_error(
        post_json(&socket, "/v2/models/scaler/infer", &big).await,
        413,
        &["larger than the limit of 4096 bytes"],
    )
    .await;

    // Still serving, and the errors were counted.
    let ok = post_json(&socket, infer, &multi_request()).await;
    assert_eq!(ok.status, 200);
    let metrics = String::from_utf8(get(&agent.tcp(), "/metrics").await.body).unwrap();
    assert!(
        metrics.contains(
            "flotilla_inference_errors_total{model=\"multi\",version=\"1\",kind=\"bad_request\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "flotilla_inference_errors_total{model=\"\",version=\"\",kind=\"not_found\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("kind=\"too_large\"} 1"), "{metrics}");
}

#[test]
fn corrupt_and_non_onnx_model_files_are_start_up_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.onnx");
    let mut bytes = std::fs::read(fixture("iris_classifier.onnx")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, bytes).unwrap();
    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "this is not a model").unwrap();
    let socket = dir.path().join("a.sock");
    for file in [&corrupt, &text] {
        let model = format!("m={}", file.display());
        let (status, stderr) = start_failure(&[
            "serve",
            "--model",
            &model,
            "--socket",
            socket.to_str().unwrap(),
        ]);
        assert!(!status.success());
        assert!(
            stderr.contains(&file.display().to_string())
                && stderr.contains("not a model ONNX Runtime can load"),
            "{stderr}"
        );
        assert!(!socket.exists(), "nothing is served when a model fails");
    }
    let missing = dir.path().join("missing.onnx");
    let model = format!("m={}", missing.display());
    let (_, stderr) = start_failure(&[
        "serve",
        "--model",
        &model,
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert!(stderr.contains("missing.onnx does not exist"), "{stderr}");
    let empty_dir = dir.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let model = format!("m={}", empty_dir.display());
    let (_, stderr) = start_failure(&[
        "serve",
        "--model",
        &model,
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert!(
        stderr.contains("has no version folders") && stderr.contains("1/model.onnx"),
        "{stderr}"
    );
}

#[test]
fn command_line_mistakes_are_explained() {
    let iris = format!("iris={}", fixture("iris_classifier.onnx").display());
    let (status, stderr) = start_failure(&["serve", "--model", &iris]);
    assert!(!status.success());
    assert!(stderr.contains("no listener"), "{stderr}");
    let (_, stderr) = start_failure(&["serve", "--model", &iris, "--http", "0.0.0.0:8000"]);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    let (_, stderr) = start_failure(&["serve", "--model", "iris", "--http", "127.0.0.1:0"]);
    assert!(stderr.contains("is not NAME=PATH"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "sokcet = \"/tmp/x.sock\"\n").unwrap();
    let (_, stderr) = start_failure(&["serve", "--config", config.to_str().unwrap()]);
    assert!(
        stderr.contains("agent.toml") && stderr.contains("sokcet"),
        "{stderr}"
    );
}

#[test]
fn a_missing_onnx_runtime_library_is_one_clear_message() {
    let iris = format!("iris={}", fixture("iris_classifier.onnx").display());
    let (status, stderr) = start_failure(&[
        "serve",
        "--model",
        &iris,
        "--http",
        "127.0.0.1:0",
        "--ort-lib",
        "/nonexistent/libonnxruntime.so",
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("/nonexistent/libonnxruntime.so")
            && stderr.contains("deploy/fetch-onnxruntime.sh"),
        "{stderr}"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args(["serve", "--model", &iris, "--http", "127.0.0.1:0"])
        .env("ORT_DYLIB_PATH", "/nonexistent/env.so")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/env.so given by ORT_DYLIB_PATH"),
        "{stderr}"
    );
}

/// Mutations of valid Open Inference Protocol bodies (JSON and binary, for a model with
/// several inputs and one taking strings) sent to a real agent: each is answered 200 or a
/// 4xx `{"error": ...}`, never a 5xx or a dropped connection, and the agent serves a valid
/// request at the end. Its process would abort on an allocation its body cannot justify
/// only if `--max-body-bytes` did not bound it; that bound is what is relied on here.
#[test]
fn mutated_inference_bodies_are_answered_or_refused() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let agent = AgentProcess::start(
        &[
            ("multi", &fixture("multi_io.onnx")),
            ("text", &fixture("text_lookup.onnx")),
        ],
        &["--max-body-bytes", "65536"],
    );
    let socket = agent.unix();
    let json_seed = serde_json::to_vec(&multi_request()).unwrap();
    let header = json!({"inputs": [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
        {"name": "b", "shape": [1, 3], "datatype": "INT64", "parameters": {"binary_data_size": 24}}
    ]});
    let header_bytes = serde_json::to_vec(&header).unwrap();
    let mut binary_seed = header_bytes.clone();
    binary_seed.extend_from_slice(&[0u8; 36]);
    let text_seed = serde_json::to_vec(
        &json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "bb"]}]}),
    )
    .unwrap();
    let seeds = [
        ("/v2/models/multi/infer", json_seed, None),
        (
            "/v2/models/multi/infer",
            binary_seed,
            Some(header_bytes.len()),
        ),
        ("/v2/models/text/infer", text_seed, None),
    ];
    let edits = prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6);
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        ..Config::default()
    });
    runner
        .run(&(0usize..3, edits), |(seed, edits)| {
            let (path, body, binary_header) = &seeds[seed];
            let mut body = body.clone();
            for (at, byte, op) in edits {
                let at = at % body.len().max(1);
                match op {
                    0 if !body.is_empty() => body[at] ^= byte | 1,
                    1 => body.insert(at, byte),
                    _ => body.truncate(at),
                }
            }
            let headers: Vec<(&str, String)> = match binary_header {
                Some(length) => vec![
                    ("content-type", "application/octet-stream".to_owned()),
                    ("inference-header-content-length", length.to_string()),
                ],
                None => vec![("content-type", "application/json".to_owned())],
            };
            let response = runtime.block_on(send(&socket, "POST", path, &headers, body));
            prop_assert!(
                response.status == 200 || (400..500).contains(&response.status),
                "{} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
            if response.status != 200 {
                prop_assert!(!response.error().is_empty());
            }
            Ok(())
        })
        .unwrap();
    let answered = runtime.block_on(post_json(
        &socket,
        "/v2/models/multi/infer",
        &multi_request(),
    ));
    assert_eq!(answered.status, 200);
}
