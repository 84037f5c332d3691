#!/usr/bin/env python3
"""Makes two versions of a ~50 MB MLP for the delivery benchmark: version 2 differs from
version 1 only in its last layer ("only the last layer retrained"). Written to the folder
given as the first argument; not committed (too big), made on demand by the benchmark.
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 2048  # three 2048x2048 float32 layers = 48 MiB of weights


def model(layers):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])
    nodes, initializers, current = [], [], "x"
    for i, weights in enumerate(layers):
        name = f"w{i}"
        initializers.append(numpy_helper.from_array(weights, name))
        out = "y" if i == len(layers) - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, name], [out]))
        current = out
    graph = helper.make_graph(nodes, "big_mlp", [x], [y], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(42)
    # Trained float weights are close to normally distributed; half-precision-looking noise
    # in the low mantissa bits keeps them as incompressible as real weights are.
    layers = [rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) * 0.02 for _ in range(3)]
    v2_layers = layers[:2] + [rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) * 0.02]
    for name, ls in (("big_v1.onnx", layers), ("big_v2.onnx", v2_layers)):
        with open(os.path.join(out, name), "wb") as f:
            f.write(model(ls).SerializeToString())
    print(out)


if __name__ == "__main__":
    main()
