#!/usr/bin/env python3
"""The Python peer for the agent benchmark: KServe's own Python model server (the `kserve`
package, FastAPI + uvicorn) serving an ONNX model with onnxruntime over the same Open
Inference Protocol v2 REST endpoints the agent serves.

Usage: kserve_onnx_server.py --model-name NAME --model-path FILE.onnx --http-port PORT
Installed by deploy/bench-peer-setup.sh into .cache/peer-venv; not part of the tests.
"""

import argparse

import kserve
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.utils.numpy_codec import from_np_dtype


class OnnxModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self):
        options = ort.SessionOptions()
        # The same setting as the agent's sessions: one thread per request.
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        results = self.session.run(None, feeds)
        outputs = []
        for name, value in zip(self.output_names, results):
            output = InferOutput(name=name, shape=list(value.shape), datatype=from_np_dtype(value.dtype))
            output.set_data_from_numpy(value, binary_data=False)
            outputs.append(output)
        # The protocol makes the request id optional; KServe's response model requires a string.
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model-path", required=True)
    args, _ = parser.parse_known_args()
    model = OnnxModel(args.model_name, args.model_path)
    ModelServer(http_port=args.http_port, workers=1, enable_grpc=False, enable_latency_logging=False).start([model])
