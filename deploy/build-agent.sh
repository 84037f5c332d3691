#!/usr/bin/env bash
# Builds the agent for a device and puts it beside the ONNX Runtime library it needs.
#
#   deploy/build-agent.sh [--target aarch64-unknown-linux-gnu] [--profile release|dev] [--out DIR]
#
# Without --target: this machine's. With --target aarch64-unknown-linux-gnu (64-bit Arm:
# Raspberry Pi 3/4/5 with a 64-bit OS, Jetson, Graviton): adds the Rust target through
# rustup, cross-compiles with Debian's gcc-aarch64-linux-gnu (the linker, and the C in
# ring, zstd and SQLite), and fetches the aarch64 library from the onnxruntime==1.31.1
# manylinux wheel on PyPI. Writes DIR/flotilla-agent and DIR/libonnxruntime.so.1.31.1
# (default DIR: target/dist/TARGET), ready for deploy/install-agent.sh --binary and --ort-lib.
# Exits 3 when the cross toolchain cannot be had here, saying which part is missing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
host=$(rustc -vV | sed -n 's/^host: //p')
target=$host profile=release out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=${2:?--target needs a triple}; shift 2 ;;
    --profile) profile=${2:?--profile needs release or dev}; shift 2 ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
out=${out:-$repo/target/dist/$target}
case "$profile" in
  release) profile_dir=release ;;
  dev) profile_dir=debug ;;
  *) echo "error: --profile is release or dev" >&2; exit 2 ;;
esac

case "$target" in
  "$host") arch=$(uname -m) ;;
  aarch64-unknown-linux-gnu)
    arch=aarch64
    command -v aarch64-linux-gnu-gcc >/dev/null || {
      echo "cannot cross-build: aarch64-linux-gnu-gcc is missing (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)" >&2
      exit 3
    }
    if ! rustc --print target-libdir --target "$target" 2>/dev/null | xargs -I{} test -d {}; then
      command -v rustup >/dev/null || { echo "cannot cross-build: no rustup to add the Rust target $target" >&2; exit 3; }
      rustup target add "$target" >&2 || { echo "cannot cross-build: rustup could not add $target" >&2; exit 3; }
    fi
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    ;;
  armv7-unknown-linux-gnueabihf)
    echo "cannot build for armv7: PyPI ships no armv7 ONNX Runtime; build ONNX Runtime from source for armv7 and pass its library to install-agent.sh --ort-lib (docs/agent.md)" >&2
    exit 3 ;;
  *) echo "error: unsupported target $target (this machine's, or aarch64-unknown-linux-gnu)" >&2; exit 2 ;;
esac

cd "$repo"
cargo build --locked --profile "$profile" -p flotilla-agent --target "$target" >&2
library=$("$repo/deploy/fetch-onnxruntime.sh" --arch "$arch")
mkdir -p "$out"
install -m 0755 "target/$target/$profile_dir/flotilla-agent" "$out/flotilla-agent"
install -m 0644 "$library" "$out/libonnxruntime.so.1.31.1"
echo "$out"
