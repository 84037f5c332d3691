"""Makes iris_mlp_5mb.onnx: an iris classifier with about 5 MB of weights (a wide
scikit-learn MLP, exported by skl2onnx), for the deployment scenario of a realistically
sized model. Too big to keep in the repository; deterministic (fixed seeds).

Run: .cache/venv/bin/python fleet-sim/scenarios/models/make_large_model.py
"""

import os

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.neural_network import MLPClassifier

here = os.path.dirname(os.path.abspath(__file__))
target = os.path.join(here, "iris_mlp_5mb.onnx")

x, y = load_iris(return_X_y=True)
x = x.astype(np.float32)
# 4 -> 1100 -> 1100 -> 3: about 1.22 million float32 weights, 4.9 MB.
model = MLPClassifier(hidden_layer_sizes=(1100, 1100), max_iter=20, random_state=7)
model.fit(x, y)
onnx = to_onnx(
    model,
    x[:1],
    options={id(model): {"zipmap": False}},
    initial_types=None,
    target_opset=17,
)
# Name the input like the other iris fixtures so the same dataset and reference apply.
onnx.graph.input[0].name = "input"
for node in onnx.graph.node:
    node.input[:] = ["input" if i == "X" else i for i in node.input]
with open(target, "wb") as f:
    f.write(onnx.SerializeToString())
print(f"{target}: {os.path.getsize(target) / 1e6:.1f} MB, accuracy {model.score(x, y):.2f}")
