#!/usr/bin/env bash
# Prepares a fresh checkout: the system packages in deploy/system-packages.txt (as root with
# apt-get it installs the missing ones; otherwise it names them and the apt-get command and
# stops), ONNX Runtime in .cache/onnxruntime and a Python venv in .cache/venv with the
# packages the fixtures and compatibility tests use. Idempotent, and quiet when all is there.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
venv=$repo/.cache/venv
packages=$repo/deploy/system-packages.txt

# Sets missing (package names) and missing_why from the list's lines whose check fails.
check_packages() {
  missing=() missing_why=()
  local pkg why check
  while IFS='|' read -r pkg why check; do
    [[ $pkg =~ ^[[:space:]]*(#|$) ]] && continue
    pkg=${pkg//[[:space:]]/}
    read -r why <<<"$why"
    read -r check <<<"$check"
    if [ -z "$check" ]; then
      echo "deploy/setup.sh: $packages: no check on the line for '$pkg'" >&2
      exit 1
    fi
    if ! (eval "$check") </dev/null >/dev/null 2>&1; then
      missing+=("$pkg")
      missing_why+=("$why")
    fi
  done <"$packages"
}

report_missing() {
  local i
  for i in "${!missing[@]}"; do
    printf '  %-16s %s\n' "${missing[$i]}" "${missing_why[$i]}" >&2
  done
}

check_packages
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } >&2; then
      echo "deploy/setup.sh: apt-get could not install: ${missing[*]}" >&2
      exit 1
    fi
    check_packages
    if [ ${#missing[@]} -gt 0 ]; then
      echo "deploy/setup.sh: installed, but these checks in deploy/system-packages.txt still fail:" >&2
      report_missing
      exit 1
    fi
  else
    sudo=sudo
    [ "$(id -u)" -eq 0 ] && sudo=
    {
      echo "deploy/setup.sh: missing system packages (deploy/system-packages.txt lists them all):"
      report_missing
      echo "Install them, then run this again:"
      echo "  ${sudo:+$sudo }apt-get update && ${sudo:+$sudo }apt-get install -y --no-install-recommends ${missing[*]}"
      command -v apt-get >/dev/null 2>&1 ||
        echo "(no apt-get here: install the equivalents; each line of the list gives the check)"
    } >&2
    exit 1
  fi
fi

"$repo/deploy/fetch-onnxruntime.sh" >/dev/null
stamp=$venv/.requirements
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$repo/deploy/requirements-dev.txt" "$stamp"; then
  echo "setting up Python venv in $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$repo/deploy/requirements-dev.txt"
  cp "$repo/deploy/requirements-dev.txt" "$stamp"
fi
