#!/usr/bin/env bash
# Installs the benchmarks' Python peers into .cache/peer-venv: KServe's Python model server with
# onnxruntime (`cargo bench -p flotilla-agent --bench inference`) and whylogs with pandas and
# scipy (`cargo bench -p flotilla-common --bench profile_peer`). Tests do not use it. Safe to
# run again: the venv is reused and pinned packages already present are left alone.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$repo/.cache/peer-venv
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    kserve==0.21.0 onnxruntime==1.31.1 \
    whylogs==1.6.4 pandas==2.3.3 scipy==1.17.1
echo "$venv/bin/python"
