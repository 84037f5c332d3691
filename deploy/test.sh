#!/usr/bin/env bash
# Runs every test: sets up what they need (deploy/setup.sh), then the whole workspace's tests.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/deploy/setup.sh"
cd "$repo"
# The arm64 agent for the emulated test (hub test arm64::*), where the cross toolchain can be
# had; build-agent.sh exits 3 and says what is missing where it cannot, and the test skips.
status=0
"$repo/deploy/build-agent.sh" --target aarch64-unknown-linux-gnu >/dev/null || status=$?
case "$status" in
  0) ;;
  3) echo "arm64 agent not built (see above): the arm64 test will be skipped" >&2 ;;
  *) exit "$status" ;;
esac
exec cargo test --workspace --locked "$@"
