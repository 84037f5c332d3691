#!/usr/bin/env bash
# Runs every test: sets up what they need (deploy/setup.sh), then the whole workspace's tests.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/deploy/setup.sh"
cd "$repo"
exec cargo test --workspace --locked "$@"
