#!/usr/bin/env bash
# Prepares a fresh checkout: ONNX Runtime in .cache/onnxruntime and a Python venv in
# .cache/venv with the packages the fixtures and compatibility tests use. Idempotent.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
venv=$repo/.cache/venv

"$repo/deploy/fetch-onnxruntime.sh" >/dev/null
stamp=$venv/.requirements
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$repo/deploy/requirements-dev.txt" "$stamp"; then
  echo "setting up Python venv in $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$repo/deploy/requirements-dev.txt"
  cp "$repo/deploy/requirements-dev.txt" "$stamp"
fi
