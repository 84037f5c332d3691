#!/usr/bin/env bash
# The agent on its own: set up, build, start flotilla-agent on the bundled
# iris classifier, ask it for metadata and predictions over its Unix socket, print the
# answers, and stop it gracefully.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
deploy/setup.sh
cargo build --release --locked -p flotilla-agent

work=$(mktemp -d)
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# A Triton-style model folder: numbered versions, the highest served by default.
mkdir -p "$work/models/iris/1"
cp agent/tests/fixtures/iris_classifier.onnx "$work/models/iris/1/model.onnx"
socket=$work/agent.sock
target/release/flotilla-agent serve --model "iris=$work/models/iris" --socket "$socket" >"$work/agent.out" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do grep -q ready "$work/agent.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$work/agent.out" || { cat "$work/agent.log" >&2; echo "error: the agent did not start" >&2; exit 1; }
cat "$work/agent.out"

ask() { # METHOD PATH [JSON]
  echo; echo "\$ curl --unix-socket $socket -X $1 http://localhost$2 ${3:+-d '$3'}"
  curl --silent --show-error --write-out '  [HTTP %{http_code}]' --unix-socket "$socket" -X "$1" "http://localhost$2" ${3:+-H 'Content-Type: application/json' -d "$3"}
  echo
}
ask GET /v2/health/ready
ask GET /v2
ask GET /v2/models/iris
ask POST /v2/models/iris/infer '{"id":"demo-1","inputs":[{"name":"float_input","shape":[3,4],"datatype":"FP32","data":[[5.1,3.5,1.4,0.2],[6.0,2.7,4.1,1.0],[6.9,3.1,5.4,2.1]]}]}'
echo "(labels: 0 setosa, 1 versicolor, 2 virginica)"
ask POST /v2/models/iris/infer '{"inputs":[{"name":"float_input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}'
ask POST /v2/models/iris/infer '{"inputs":[{"name":"float_input","shape":[1,4],"datatype":"INT64","data":[1,2,3,4]}]}'

kill -TERM "$agent_pid"; wait "$agent_pid"; agent_pid=
echo; echo "agent stopped; socket removed: $([ -e "$socket" ] && echo no || echo yes)"
