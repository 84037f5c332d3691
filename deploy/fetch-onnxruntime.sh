#!/usr/bin/env bash
# Puts libonnxruntime.so.1.31.1 into .cache/onnxruntime/ (git-ignored) and prints its path.
#
# The library comes from the onnxruntime==1.31.1 wheel on PyPI (its onnxruntime/capi/ folder):
# Flotilla loads ONNX Runtime at run time and never downloads prebuilt binaries from elsewhere.
# Idempotent: when the library is already there it only prints the path.
# Usage: deploy/fetch-onnxruntime.sh [--arch x86_64|aarch64] [DEST_DIR]
#   --arch: the CPU the library is for (default: this machine's); another one's goes to
#   .cache/onnxruntime-ARCH/ by default. PyPI has manylinux wheels for x86_64 and aarch64
#   only (no armv7).
set -euo pipefail
version=1.31.1
lib=libonnxruntime.so.${version}
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
arch=$(uname -m)
if [ "${1:-}" = "--arch" ]; then
  arch=${2:?--arch needs x86_64 or aarch64}
  shift 2
fi
case "$arch" in
  x86_64|aarch64) ;;
  *) echo "error: no ONNX Runtime wheel on PyPI for $arch (there are x86_64 and aarch64)" >&2; exit 2 ;;
esac
if [ "$arch" = "$(uname -m)" ]; then
  default_dest=$repo/.cache/onnxruntime
  platform_args=()
else
  default_dest=$repo/.cache/onnxruntime-$arch
  platform_args=(--platform "manylinux_2_28_$arch" --platform "manylinux_2_27_$arch" --platform "manylinux2014_$arch")
fi
dest=${1:-$default_dest}

if [ -f "$dest/$lib" ]; then
  echo "$dest/$lib"
  exit 0
fi
command -v "$python" >/dev/null || { echo "error: $python not found; install Python 3 with pip" >&2; exit 1; }
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching onnxruntime==$version ($arch) from PyPI" >&2
"$python" -m pip download --quiet --no-deps --only-binary=:all: ${platform_args[@]+"${platform_args[@]}"} \
  --dest "$work" "onnxruntime==$version" >&2
wheel=$(ls "$work"/onnxruntime-"$version"-*.whl)
"$python" - "$wheel" "$work/$lib" "$lib" <<'PY'
import shutil, sys, zipfile
wheel, out, lib = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(f"onnxruntime/capi/{lib}") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod 0755 "$work/$lib"
# Rename into place so a concurrent or interrupted run never leaves half a library.
mv "$work/$lib" "$dest/$lib"
echo "$dest/$lib"
