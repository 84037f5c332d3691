#!/usr/bin/env python3
"""Drives a running flotilla-agent with clients we did not write, to prove protocol compatibility.

- Triton's stock Python client (`tritonclient[http]`) against the TCP listener: health,
  server and model metadata, and inference with binary and JSON tensors.
- Python's standard-library `http.client` over the Unix socket: a plain KServe v2 JSON request.

Outputs are compared with expected.json, computed by onnxruntime when the fixtures were made.
Usage: stock_clients.py --http HOST:PORT --socket PATH --expected expected.json
"""

import argparse
import http.client
import json
import socket

import numpy as np
import tritonclient.http as triton


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def check_triton_client(url, expected):
    client = triton.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.is_model_ready("iris")
    metadata = client.get_model_metadata("iris")
    assert metadata["platform"] == "onnx_onnxv1", metadata
    assert metadata["inputs"] == [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}], metadata

    rows = np.array(expected["iris_classifier"]["inputs"], dtype=np.float32)
    for binary in (True, False):
        tensor = triton.InferInput("float_input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        result = client.infer("iris", [tensor], outputs=outputs, request_id="compat-1")
        assert result.get_response()["id"] == "compat-1"
        assert result.as_numpy("label").tolist() == expected["iris_classifier"]["label"]
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["iris_classifier"]["probabilities"], rtol=1e-5, atol=1e-7)

    words = np.array(expected["text_lookup"]["text"], dtype=object)
    tensor = triton.InferInput("text", [len(words)], "BYTES")
    tensor.set_data_from_numpy(words, binary_data=True)
    result = client.infer("text", [tensor])
    assert result.as_numpy("code").tolist() == expected["text_lookup"]["code"]

    try:
        client.infer("missing-model", [tensor])
        raise AssertionError("an unknown model must be an error")
    except triton.InferenceServerException as error:
        assert "unknown model" in str(error), error


def check_unix_socket(path, expected):
    connection = UnixHTTPConnection(path)
    rows = expected["iris_classifier"]["inputs"]
    body = {"inputs": [{"name": "float_input", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}]}
    connection.request("POST", "/v2/models/iris/infer", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    answer = json.loads(response.read())
    assert answer["outputs"][0]["data"] == expected["iris_classifier"]["label"], answer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--expected", required=True)
    args = parser.parse_args()
    with open(args.expected) as f:
        expected = json.load(f)
    check_triton_client(args.http, expected)
    check_unix_socket(args.socket, expected)
    print("stock clients: ok")


if __name__ == "__main__":
    main()
