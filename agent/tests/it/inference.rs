//! Inference and metadata through the real agent process, compared with outputs the Python
//! onnxruntime computed when the fixtures were made.

use serde_json::json;

use crate::support::*;

fn iris_request(rows: &serde_json::Value, shape_rows: usize) -> serde_json::Value {
    json!({"id": "req-42", "inputs": [{"name": "float_input", "shape": [shape_rows, 4], "datatype": "FP32", "data": rows}]})
}

#[tokio::test]
async fn iris_classifier_matches_onnxruntime_over_socket_and_tcp() {
    let agent = AgentProcess::start(&[("iris", &fixture("iris_classifier.onnx"))], &[]);
    let expected = expected();
    let rows = &expected["iris_classifier"]["inputs"];
    let count = rows.as_array().unwrap().len();
    for endpoint in [agent.unix(), agent.tcp()] {
        // Nested data.
        let response = post_json(
            &endpoint,
            "/v2/models/iris/infer",
            &iris_request(rows, count),
        )
        .await;
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let body = response.json();
        assert_eq!(body["id"], "req-42");
        assert_eq!(body["model_name"], "iris");
        assert_eq!(body["model_version"], "1");
        let outputs = body["outputs"].as_array().unwrap();
        assert_eq!(outputs[0]["name"], "label");
        assert_eq!(outputs[0]["datatype"], "INT64");
        assert_eq!(outputs[0]["shape"], json!([count]));
        assert_eq!(outputs[0]["data"], expected["iris_classifier"]["label"]);
        assert_eq!(outputs[1]["shape"], json!([count, 3]));
        assert_close(
            &outputs[1]["data"],
            &expected["iris_classifier"]["probabilities"],
            1e-6,
        );
        // Flat data gives the same answer.
        let flat: Vec<serde_json::Value> = rows
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().clone())
            .collect();
        let response = post_json(
            &endpoint,
            "/v2/models/iris/infer",
            &iris_request(&json!(flat), count),
        )
        .await;
        assert_eq!(response.json()["outputs"], body["outputs"]);
    }
}

#[tokio::test]
async fn binary_tensor_extension_both_ways() {
    let agent = AgentProcess::start(&[("iris", &fixture("iris_classifier.onnx"))], &[]);
    let expected = expected();
    let rows: Vec<f32> = expected["iris_classifier"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    let count = rows.len() / 4;
    let header = json!({
        "inputs": [{"name": "float_input", "shape": [count, 4], "datatype": "FP32", "parameters": {"binary_data_size": bytes.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}, {"name": "label"}]
    });
    let response = post_binary(
        &agent.unix(),
        "/v2/models/iris/infer",
        &header,
        std::slice::from_ref(&bytes),
    )
    .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.headers["content-type"], "application/octet-stream");
    let (json_part, binary) = split_binary_response(&response);
    let outputs = json_part["outputs"].as_array().unwrap();
    assert_eq!(outputs[0]["name"], "probabilities");
    assert_eq!(
        outputs[0]["parameters"]["binary_data_size"],
        json!(count * 3 * 4)
    );
    assert!(outputs[0].get("data").is_none());
    assert_eq!(
        outputs[1]["data"], expected["iris_classifier"]["label"],
        "label stays JSON"
    );
    let probabilities: Vec<f64> = binary
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
        .collect();
    assert_close(
        &json!(probabilities),
        &expected["iris_classifier"]["probabilities"],
        1e-6,
    );

    // binary_data_output asks for every output in binary.
    let header = json!({
        "parameters": {"binary_data_output": true},
        "inputs": [{"name": "float_input", "shape": [count, 4], "datatype": "FP32", "parameters": {"binary_data_size": bytes.len()}}]
    });
    let response = post_binary(&agent.tcp(), "/v2/models/iris/infer", &header, &[bytes]).await;
    let (json_part, binary) = split_binary_response(&response);
    assert_eq!(
        json_part["outputs"][0]["parameters"]["binary_data_size"],
        json!(count * 8)
    );
    let labels: Vec<i64> = binary[..count * 8]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(json!(labels), expected["iris_classifier"]["label"]);
    assert_eq!(binary.len(), count * 8 + count * 12);
}

#[tokio::test]
async fn multiple_inputs_outputs_and_output_selection() {
    let agent = AgentProcess::start(&[("multi", &fixture("multi_io.onnx"))], &[]);
    let expected = &expected()["multi_io"];
    let request = json!({
        "inputs": [
            {"name": "b", "shape": [2, 3], "datatype": "INT64", "data": expected["b"]},
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": expected["a"]}
        ]
    });
    let body = post_json(&agent.unix(), "/v2/models/multi/infer", &request)
        .await
        .json();
    let outputs = body["outputs"].as_array().unwrap();
    let names: Vec<&str> = outputs
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sum", "b_times_two", "a_mean"]);
    assert_close(&outputs[0]["data"], &expected["sum"], 1e-6);
    assert_eq!(
        outputs[1]["data"],
        json!(
            expected["b_times_two"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().clone())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(outputs[2]["shape"], json!([2]));
    assert_close(&outputs[2]["data"], &expected["a_mean"], 1e-6);

    let mut selected = request.clone();
    selected["outputs"] = json!([{"name": "a_mean"}]);
    let body = post_json(&agent.unix(), "/v2/models/multi/infer", &selected)
        .await
        .json();
    assert_eq!(body["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(body["outputs"][0]["name"], "a_mean");
    assert!(body.get("id").is_none(), "no id asked, none echoed");
}

#[tokio::test]
async fn string_input_through_a_label_encoder() {
    let agent = AgentProcess::start(&[("text", &fixture("text_lookup.onnx"))], &[]);
    let expected = &expected()["text_lookup"];
    let words = expected["text"].as_array().unwrap();
    let request = json!({"inputs": [{"name": "text", "shape": [words.len()], "datatype": "BYTES", "data": words}]});
    let body = post_json(&agent.unix(), "/v2/models/text/infer", &request)
        .await
        .json();
    assert_eq!(body["outputs"][0]["data"], expected["code"]);

    // The same as binary BYTES: 4-byte little-endian length, then the bytes.
    let mut bytes = Vec::new();
    for word in words {
        let word = word.as_str().unwrap().as_bytes();
        bytes.extend_from_slice(&(word.len() as u32).to_le_bytes());
        bytes.extend_from_slice(word);
    }
    let header = json!({"inputs": [{"name": "text", "shape": [words.len()], "datatype": "BYTES", "parameters": {"binary_data_size": bytes.len()}}]});
    let response = post_binary(&agent.unix(), "/v2/models/text/infer", &header, &[bytes]).await;
    assert_eq!(response.json()["outputs"][0]["data"], expected["code"]);
}

/// Every datatype the protocol and ONNX Runtime share goes through an Identity model and
/// comes back unchanged, in JSON and in binary.
#[tokio::test]
async fn every_datatype_round_trips_in_json_and_binary() {
    let agent = AgentProcess::start(&[("all", &fixture("all_types.onnx"))], &[]);
    let samples: Vec<(&str, &str, serde_json::Value)> = vec![
        ("bool", "BOOL", json!([true, false, false, true])),
        ("uint8", "UINT8", json!([0, 1, 200, 255])),
        ("uint16", "UINT16", json!([0, 1, 60000, 65535])),
        (
            "uint32",
            "UINT32",
            json!([0, 1, 3000000000u64, 4294967295u64]),
        ),
        (
            "uint64",
            "UINT64",
            json!([0, 1, 10000000000000000000u64, 18446744073709551615u64]),
        ),
        ("int8", "INT8", json!([-128, -1, 0, 127])),
        ("int16", "INT16", json!([-32768, -1, 0, 32767])),
        ("int32", "INT32", json!([-2147483648i64, -1, 0, 2147483647])),
        (
            "int64",
            "INT64",
            json!([-9223372036854775808i64, -1, 0, 9223372036854775807i64]),
        ),
        ("fp16", "FP16", json!([0.5, -2.0, 1024.0, 0.000061035156])),
        ("fp32", "FP32", json!([0.25, -1.5, 3.4028235e38, 1e-7])),
        ("fp64", "FP64", json!([0.1, -1e300, 2.5, 1e-300])),
        ("bf16", "BF16", json!([1.0, -2.0, 0.5, 256.0])),
        ("bytes", "BYTES", json!(["héllo", "", "wörld", "日本"])),
    ];
    let inputs: Vec<serde_json::Value> = samples
        .iter()
        .map(|(name, datatype, data)| json!({"name": format!("in_{name}"), "shape": [2, 2], "datatype": datatype, "data": data}))
        .collect();
    let body = post_json(
        &agent.unix(),
        "/v2/models/all/infer",
        &json!({"inputs": inputs}),
    )
    .await
    .json();
    for (name, datatype, data) in &samples {
        let output = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == format!("out_{name}"))
            .unwrap();
        assert_eq!(output["datatype"], *datatype);
        assert_eq!(output["shape"], json!([2, 2]));
        if datatype.starts_with("FP") && *datatype != "FP64" {
            assert_close(&output["data"], data, 1e-6);
        } else {
            assert_eq!(&output["data"], data, "{datatype}");
        }
    }

    // Binary: send the JSON answer's bytes back in as binary and expect the same bytes out.
    let mut header_inputs = Vec::new();
    let mut parts = Vec::new();
    for (name, datatype, data) in &samples {
        let single = json!({"name": format!("in_{name}"), "shape": [2, 2], "datatype": datatype, "data": data});
        let one = post_json(&agent.unix(), "/v2/models/all/infer", &json!({"inputs": inputs.iter().map(|i| if i["name"] == single["name"] { single.clone() } else { i.clone() }).collect::<Vec<_>>(), "outputs": [{"name": format!("out_{name}"), "parameters": {"binary_data": true}}]})).await;
        let (_, bytes) = split_binary_response(&one);
        header_inputs.push(json!({"name": format!("in_{name}"), "shape": [2, 2], "datatype": datatype, "parameters": {"binary_data_size": bytes.len()}}));
        parts.push(bytes);
    }
    let header = json!({"inputs": header_inputs, "parameters": {"binary_data_output": true}});
    let response = post_binary(&agent.unix(), "/v2/models/all/infer", &header, &parts).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let (json_part, binary) = split_binary_response(&response);
    let mut offset = 0;
    for (index, output) in json_part["outputs"].as_array().unwrap().iter().enumerate() {
        let size = output["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        assert_eq!(
            &binary[offset..offset + size],
            &parts[index][..],
            "{}",
            output["name"]
        );
        offset += size;
    }
}

#[tokio::test]
async fn metadata_health_and_versions_from_a_version_folder() {
    let dir = tempfile::tempdir().unwrap();
    for (version, file) in [(1, "scaler_v1.onnx"), (2, "scaler_v2.onnx")] {
        std::fs::create_dir_all(dir.path().join(version.to_string())).unwrap();
        std::fs::copy(
            fixture(file),
            dir.path().join(format!("{version}/model.onnx")),
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.path().join("notes")).unwrap();
    let agent = AgentProcess::start(
        &[
            ("scaler", dir.path()),
            ("iris", &fixture("iris_classifier.onnx")),
        ],
        &[],
    );
    let endpoint = agent.unix();
    let live = get(&endpoint, "/v2/health/live").await;
    assert_eq!(
        (live.status, live.json()),
        (200, json!({"live": true})),
        "KServe clients parse this body"
    );
    let ready = get(&endpoint, "/v2/health/ready").await;
    assert_eq!((ready.status, ready.json()), (200, json!({"ready": true})));
    let server = get(&endpoint, "/v2").await.json();
    assert_eq!(server["name"], "flotilla-agent");
    assert!(
        server["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("binary_tensor_data"))
    );

    let metadata = get(&endpoint, "/v2/models/scaler").await.json();
    assert_eq!(metadata["versions"], json!(["1", "2"]));
    assert_eq!(metadata["platform"], "onnx_onnxv1");
    assert_eq!(
        metadata["inputs"],
        json!([{"name": "x", "datatype": "FP32", "shape": [-1]}])
    );
    let iris = get(&endpoint, "/v2/models/iris/versions/1").await.json();
    assert_eq!(iris["inputs"][0]["shape"], json!([-1, 4]));
    assert_eq!(
        iris["outputs"][1],
        json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]})
    );

    assert_eq!(get(&endpoint, "/v2/models/scaler/ready").await.status, 200);
    assert_eq!(
        get(&endpoint, "/v2/models/scaler/versions/1/ready")
            .await
            .status,
        200
    );
    assert_eq!(
        get(&endpoint, "/v2/models/scaler/versions/3/ready")
            .await
            .status,
        404
    );

    let request =
        json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, -3]}]});
    let latest = post_json(&endpoint, "/v2/models/scaler/infer", &request)
        .await
        .json();
    assert_eq!(latest["model_version"], "2");
    assert_eq!(latest["outputs"][0]["data"], json!([3.0, -6.0]));
    let first = post_json(&endpoint, "/v2/models/scaler/versions/1/infer", &request)
        .await
        .json();
    assert_eq!(first["model_version"], "1");
    assert_eq!(first["outputs"][0]["data"], json!([1.5, -3.0]));

    let index = send(&endpoint, "POST", "/v2/repository/index", &[], Vec::new())
        .await
        .json();
    assert_eq!(index.as_array().unwrap().len(), 3, "{index}");
}

#[tokio::test]
async fn zero_sized_batches_and_non_finite_values_in_binary_pass_through() {
    let agent = AgentProcess::start(&[("scaler", &fixture("scaler_v2.onnx"))], &[]);
    let empty = json!({"inputs": [{"name": "x", "shape": [0], "datatype": "FP32", "data": []}]});
    let body = post_json(&agent.unix(), "/v2/models/scaler/infer", &empty)
        .await
        .json();
    assert_eq!(body["outputs"][0]["shape"], json!([0]));
    assert_eq!(body["outputs"][0]["data"], json!([]));

    // NaN and infinity travel in binary both ways: the model takes them.
    let values = [f32::NAN, f32::INFINITY, -1.0];
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": true}}]});
    let response = post_binary(&agent.unix(), "/v2/models/scaler/infer", &header, &[bytes]).await;
    assert_eq!(response.status, 200);
    let (_, binary) = split_binary_response(&response);
    let out: Vec<f32> = binary
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(out[0].is_nan());
    assert_eq!(&out[1..], &[f32::INFINITY, -2.0]);
}
