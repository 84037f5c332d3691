#!/usr/bin/env bash
# Installs the benchmark's Python peer — KServe's Python model server with onnxruntime — into
# .cache/peer-venv. Only `cargo bench -p flotilla-agent --bench inference` uses it; tests do not.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$repo/.cache/peer-venv
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check kserve==0.21.0 onnxruntime==1.31.1
echo "$venv/bin/python"
