#!/usr/bin/env python3
"""Drives a running flotilla-agent with clients we did not write, to prove protocol compatibility.

- Triton's stock Python client (`tritonclient[http]`) against the TCP listener: health,
  server and model metadata, inference with binary and JSON tensors, and every datatype
  round-tripped through an Identity model.
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


def check_all_types(url):
    """Every datatype through Triton's client, binary and JSON (BF16 is binary-only there):
    an encoder and decoder we did not write check ours."""
    import ml_dtypes
    client = triton.InferenceServerClient(url)
    samples = [
        ("bool", "BOOL", np.array([[True, False], [False, True]])),
        ("uint8", "UINT8", np.array([[0, 255], [1, 2]], np.uint8)),
        ("uint16", "UINT16", np.array([[0, 65535], [1, 2]], np.uint16)),
        ("uint32", "UINT32", np.array([[0, 4294967295], [1, 2]], np.uint32)),
        ("uint64", "UINT64", np.array([[0, 2**64 - 1], [1, 2]], np.uint64)),
        ("int8", "INT8", np.array([[-128, 127], [1, 2]], np.int8)),
        ("int16", "INT16", np.array([[-32768, 32767], [1, 2]], np.int16)),
        ("int32", "INT32", np.array([[-(2**31), 2**31 - 1], [1, 2]], np.int32)),
        ("int64", "INT64", np.array([[-(2**63), 2**63 - 1], [1, 2]], np.int64)),
        ("fp16", "FP16", np.array([[0.5, -2], [1024, 6e-5]], np.float16)),
        ("fp32", "FP32", np.array([[0.25, -1.5], [3.4e38, 1e-7]], np.float32)),
        ("fp64", "FP64", np.array([[0.1, -1e300], [2.5, 1e-300]], np.float64)),
        ("bf16", "BF16", np.array([[1.0, -2.0], [0.5, 256.0]], dtype=ml_dtypes.bfloat16)),
        ("bytes", "BYTES", np.array([["héllo".encode(), b""], ["wörld".encode(), "日本".encode()]], dtype=object)),
    ]
    for binary in (True, False):
        inputs, outputs = [], []
        for name, datatype, array in samples:
            as_binary = binary or datatype == "BF16"
            tensor = triton.InferInput("in_" + name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=as_binary)
            inputs.append(tensor)
            outputs.append(triton.InferRequestedOutput("out_" + name, binary_data=as_binary))
        result = client.infer("all", inputs, outputs=outputs)
        for name, datatype, array in samples:
            got = result.as_numpy("out_" + name)
            if datatype == "BYTES":
                got = [x if isinstance(x, bytes) else x.encode() for x in got.flatten()]
                assert got == list(array.flatten()), (name, binary, got)
            else:
                assert got.shape == array.shape, (name, got.shape)
                assert np.array_equal(got.astype(np.float64), array.astype(np.float64)), (name, binary, got, array)


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
    check_all_types(args.http)
    check_unix_socket(args.socket, expected)
    print("stock clients: ok")


if __name__ == "__main__":
    main()
