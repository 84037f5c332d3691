#!/usr/bin/env python3
"""The demo's retraining job (scikit-learn + skl2onnx, on the iris dataset scikit-learn ships).

  retrain.py --initial ...   trains version 1 on the iris measurements and pushes it.
  retrain.py ...             run by the hub's retraining trigger: reads the trigger payload
                             (FLOTILLA_TRIGGER_FILE), fetches the devices' captured inputs,
                             estimates how the drifted features moved, retrains, evaluates and
                             pushes the candidate with its metrics and a new reference profile.

How the drift is learnt: the drift in the demo is a sensor offset on some devices (their petal
and sepal lengths read longer). The captured inputs are a mixture of devices that drifted and
devices that did not; the trigger's evidence says which share of devices drifted (p), so for a
drifted feature f the offset is (mean of captured f - mean of training f) / p. The new training
set is the labelled measurements plus the same flowers as the offset sensors read them (labels
do not change with the sensor), so the candidate serves both kinds of device. Its accuracy is
measured on a holdout mixed like today's fleet, next to production's on the same holdout.
"""

import argparse
import csv
import io
import json
import os
import subprocess
import ssl
import sys
import urllib.request

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def say(text):
    print(f"[retrain] {text}", flush=True)


def measurements(seed):
    """Labelled iris measurements: 3000 rows bootstrapped from the 150 real ones, with a
    little noise (2% of each feature's spread), as the fixtures' reference is made."""
    iris = load_iris()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(iris.data), 3000)
    x = iris.data[idx] + rng.normal(0.0, 0.02, (3000, 4)) * iris.data.std(axis=0)
    return x.astype(np.float32), iris.target[idx]


def export(model, path, doc):
    onx = convert_sklearn(
        model,
        initial_types=[("float_input", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    onx.doc_string = doc
    onx.graph.name = "iris_classifier"
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())


def write_csv(path, rows):
    with open(path, "w") as f:
        f.write(",".join(FEATURES) + "\n")
        for row in rows:
            f.write(",".join(f"{v:.3f}" for v in row) + "\n")


def push(args, model_path, reference_path, metrics, extra):
    command = [args.flotilla, "--hub", args.hub, "model", "push", args.model, model_path,
               "--reference", reference_path] + extra
    for name, value in metrics.items():
        command += ["--metric", f"{name}={value:.4f}"]
    env = dict(os.environ, FLOTILLA_TOKEN=open(args.token_file).read().strip())
    if args.ca_file:
        env["FLOTILLA_CA_FILE"] = args.ca_file
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        sys.exit(f"flotilla model push failed ({result.returncode})")


def fetch(url, token_file, ca_file):
    request = urllib.request.Request(
        url, headers={"Authorization": "Bearer " + open(token_file).read().strip()})
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https://") else None
    with urllib.request.urlopen(request, timeout=30, context=context) as answer:
        return answer.read().decode()


def initial(args):
    x, y = measurements(seed=1)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    accuracy = model.score(x_test, y_test)
    say(f"version 1: logistic regression on {len(x_train)} iris measurements, holdout accuracy {accuracy:.3f}")
    path = os.path.join(args.work, "iris_v1.onnx")
    reference = os.path.join(args.work, "iris_v1_training.csv")
    export(model, path, "iris logistic regression")
    write_csv(reference, x_train)
    push(args, path, reference, {"accuracy": accuracy}, ["--dataset", "iris (scikit-learn)"])


def retrain(args):
    payload = json.load(open(args.trigger_file or os.environ["FLOTILLA_TRIGGER_FILE"]))
    version = payload["version"]
    report = payload.get("drift_report") or {}
    drifted = [f for f in report.get("drifted_features", []) if f in FEATURES]
    evidence = payload.get("evidence") or []
    judged = sum(w["judged_devices"] for w in evidence)
    share = sum(w["drifting_devices"] for w in evidence) / judged if judged else 0.0
    say(f"trigger {payload['id']}: {payload['reason']} on version {version}; "
        f"drifted features {drifted}; {share:.0%} of judged devices drifting")
    if not drifted or share <= 0:
        sys.exit("the payload names no drifted feature and no drifting devices: nothing to learn")

    # The inputs captured since the drift streak began (earlier ones predate the drift).
    since = min(w["since_ms"] for w in evidence)
    captured = [r for r in csv.DictReader(io.StringIO(fetch(payload["captured_data"]["captures_csv"], args.token_file, args.ca_file)))
                if int(r["at_ms"]) >= since]
    if len(captured) < 50:
        sys.exit(f"only {len(captured)} captured samples: too few to estimate the drift")
    current = np.array([[float(r[f]) for f in FEATURES] for r in captured], dtype=np.float64)
    x, y = measurements(seed=1)
    offset = np.zeros(4)
    for f in drifted:
        i = FEATURES.index(f)
        offset[i] = (current[:, i].mean() - x[:, i].mean()) / share
    say(f"{len(captured)} captured inputs; estimated sensor offset "
        + ", ".join(f"{FEATURES[i]} {offset[i]:+.2f}" for i in range(4) if offset[i]))

    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    rng = np.random.default_rng(2)
    # A holdout mixed like today's fleet: the drifting share read through the offset.
    shifted = rng.random(len(x_test)) < share
    x_fleet = x_test + np.outer(shifted, offset).astype(np.float32)
    production = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    candidate = LogisticRegression(max_iter=1000).fit(
        np.vstack([x_train, x_train + offset.astype(np.float32)]), np.concatenate([y_train, y_train]))
    before, after = production.score(x_fleet, y_test), candidate.score(x_fleet, y_test)
    say(f"accuracy on a holdout mixed like today's fleet: production {before:.3f}, candidate {after:.3f}")

    path = os.path.join(args.work, f"iris_retrained_from_v{version}.onnx")
    reference = os.path.join(args.work, f"iris_retrained_from_v{version}_training.csv")
    export(candidate, path, f"iris logistic regression retrained for drift on {', '.join(drifted)}")
    # The new reference is what the fleet looks like now: the same mixture.
    mix = rng.random(len(x_train)) < share
    write_csv(reference, x_train + np.outer(mix, offset).astype(np.float32))
    push(args, path, reference, {"accuracy": after, "production_accuracy_on_fleet": before},
         ["--parent", str(version), "--dataset", f"iris + sensor offset learnt from trigger {payload['id']}"])
    say("candidate pushed; the hub's quality gate decides what happens next")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--initial", action="store_true", help="train and push version 1")
    parser.add_argument("--flotilla", required=True, help="path of the flotilla CLI")
    parser.add_argument("--hub", required=True)
    parser.add_argument("--token-file", required=True, help="file holding an operator token")
    parser.add_argument("--ca-file", default=os.environ.get("FLOTILLA_CA_FILE"),
                        help="the hub's CA certificate, for an https hub (default: $FLOTILLA_CA_FILE)")
    parser.add_argument("--work", required=True, help="folder for models and training data")
    parser.add_argument("--model", default="iris")
    parser.add_argument("--trigger-file", help="default: $FLOTILLA_TRIGGER_FILE")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    initial(args) if args.initial else retrain(args)


if __name__ == "__main__":
    main()
