#!/usr/bin/env bash
# The arm64 agent under qemu-aarch64 against the native x86-64 agent, one run: idle RSS and
# per-request latency (200 sequential curl requests to the iris classifier, median and p90).
# Emulated figures say what emulation costs on this machine, not what a device does.
# Needs: cargo build --release -p flotilla-agent; deploy/build-agent.sh --target aarch64-unknown-linux-gnu
set -euo pipefail
cd "$(dirname "$0")/../.."
dist=target/dist/aarch64-unknown-linux-gnu
body='{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'
measure() { # NAME PORT
  sleep 8
  pid=$(ss -ltnp "sport = :$2" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  for _ in $(seq 200); do
    curl -s -o /dev/null -w '%{time_total}\n' -X POST -H 'content-type: application/json' \
      -d "$body" "localhost:$2/v2/models/iris/infer"
  done | sort -n | awk -v name="$1" -v rss="$rss" '{a[NR]=$1} END {printf "%s: idle RSS %.1f MiB, p50 %.2f ms, p90 %.2f ms\n", name, rss/1024, a[int(NR*0.5)]*1000, a[int(NR*0.9)]*1000}'
}
target/release/flotilla-agent serve --model iris=agent/tests/fixtures/iris_classifier.onnx \
  --http 127.0.0.1:18201 --sessions 1 >/dev/null 2>&1 &
native=$!
measure "x86-64 native" 18201
kill "$native" 2>/dev/null || true
# qemu-user 7.2 shows the host's /proc/cpuinfo, where ONNX Runtime finds no Arm core and
# crashes: give the emulated agent an Arm one (two Cortex-A72 cores) in its own mount namespace.
cpuinfo=$(mktemp)
trap 'rm -f "$cpuinfo"' EXIT
for n in 0 1; do
  printf 'processor\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$n"
done >"$cpuinfo"
unshare --mount sh -c "mount --bind $cpuinfo /proc/cpuinfo && exec qemu-aarch64 -L /usr/aarch64-linux-gnu $dist/flotilla-agent serve --model iris=agent/tests/fixtures/iris_classifier.onnx --http 127.0.0.1:18202 --sessions 1 --ort-lib $dist/libonnxruntime.so.1.31.1" >/dev/null 2>&1 &
emulated=$!
measure "arm64 under qemu-aarch64 (emulated)" 18202
kill "$emulated" 2>/dev/null || true
