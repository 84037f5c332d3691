#!/usr/bin/env bash
# Runs a fleet-sim scenario against a hub in its own process, with its embedded broker or
# with Mosquitto, so the hub's (and the broker's) CPU and memory are measured apart from the
# fleet's. Used for the 10,000-device figures in docs/BENCHMARKS.md:
#   deploy/bench/fleet-external-hub.sh fleet-sim/scenarios/steady-10k.toml embedded
#   deploy/bench/fleet-external-hub.sh fleet-sim/scenarios/steady-10k.toml mosquitto
# A third argument, plain, turns the hub's TLS off ([tls] enabled = false: HTTP, plain MQTT,
# QUIC without device certificates) to measure what TLS costs against the default, tls:
#   deploy/bench/fleet-external-hub.sh fleet-sim/scenarios/deploy-1k-5mb.toml embedded plain
# (With mosquitto the devices speak plain MQTT to it either way; the hub's API and QUIC
# follow the third argument.)
# Writes the report to target/fleet-<scenario>-<broker>.json (and .svg) and prints the
# summary, then the broker's own CPU seconds when it is Mosquitto.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
scenario=$(realpath "$1")
broker=${2:-embedded}
transport=${3:-tls}
case "$transport" in
  tls) tls=true scheme=https ;;
  plain) tls=false scheme=http ;;
  *) echo "error: the third argument is tls or plain, not $transport" >&2; exit 2 ;;
esac
cd "$repo"
deploy/setup.sh
cargo build --release --locked -p flotilla-hub -p flotilla-sim
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$repo/.cache/onnxruntime/libonnxruntime.so.1.31.1}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mqtt_port=18830
api=127.0.0.1:17070
broker_setting="listen = \"127.0.0.1:$mqtt_port\""
if [ "$broker" = mosquitto ]; then
  command -v mosquitto >/dev/null || { echo "error: install mosquitto (apt-get install mosquitto)" >&2; exit 1; }
  # No connection cap; big enough messages for telemetry windows; nothing on disk. The hub
  # is one subscriber for the whole fleet: with Mosquitto's default queue (1,000 QoS 1
  # messages per client) a minute's aligned windows from 10,000 devices overflow it and
  # Mosquitto drops them after acknowledging them to the devices (measured: 5,634 windows
  # lost with a 10,000-message queue), so the hub's queue is unbounded here.
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\nmessage_size_limit 1048576\nmax_queued_messages 0\nmax_queued_bytes 0\n' \
    "$mqtt_port" >"$work/mosquitto.conf"
  mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
  pids+=($!)
  mosquitto_pid=$!
  broker_setting="url = \"mqtt://127.0.0.1:$mqtt_port\""
  sleep 1
fi

target/release/flotilla-hub init --data-dir "$work/hub" >"$work/init.txt"
token=$(grep -o 'flo_op_[A-Za-z0-9_-]*' "$work/init.txt" | head -1)
cat >"$work/hub.toml" <<EOF
listen = "$api"

[broker]
$broker_setting

[quic]
listen = "127.0.0.1:17443"

[tls]
enabled = $tls

[telemetry]
drift_check_seconds = 5
drift_lookback_seconds = 300
EOF
target/release/flotilla-hub serve --data-dir "$work/hub" --config "$work/hub.toml" \
  >"$work/hub.out" 2>"$work/hub.log" &
pids+=($!)
for _ in $(seq 100); do
  curl -fs --cacert "$work/hub/keys/ca.crt" "$scheme://$api/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done

name=$(basename "$scenario" .toml)
out=target/fleet-$name-$broker-$transport
status=0
target/release/flotilla-sim run "$scenario" --hub "$scheme://$api" --token "$token" \
  --ca-file "$work/hub/keys/ca.crt" --broker "127.0.0.1:$mqtt_port" --json "$out.json" --svg "$out.svg" || status=$?
if [ -n "${mosquitto_pid:-}" ]; then
  ticks=$(awk '{print $14 + $15}' "/proc/$mosquitto_pid/stat")
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$mosquitto_pid/status")
  echo "mosquitto: $(echo "$ticks / 100" | bc -l | cut -c1-6) CPU seconds, peak RSS $((rss / 1024)) MiB"
fi
echo "report: $out.json"
exit $status
