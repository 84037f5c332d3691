#!/usr/bin/env bash
# The main job: Flotilla's whole loop on one machine, narrated. Sets up (ONNX Runtime and a
# Python venv with scikit-learn and skl2onnx, in .cache/), builds, then runs `flotilla-sim
# demo`: a hub, 100 simulated devices and one real flotilla-agent; version 1 rolled out in
# waves; drift on part of the fleet fires the retraining trigger, whose job
# (deploy/demo/retrain.py) pushes a retrained version; the quality gate passes it and its
# canary rollout completes; a broken version is rolled back by the fleet's gates. At the end
# it prints the timeline and commands to look around, and keeps the hub up until Ctrl-C.
# Arguments go to `flotilla-sim demo` (e.g. --devices 40, --exit).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
deploy/setup.sh
cargo build --release --locked -p flotilla-agent -p flotilla-hub -p flotilla-cli -p flotilla-sim
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$repo/.cache/onnxruntime/libonnxruntime.so.1.31.1}
exec target/release/flotilla-sim demo "$@"
