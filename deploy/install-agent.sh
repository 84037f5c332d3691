#!/usr/bin/env bash
# Installs the Flotilla agent on a device and enrolls it with the hub.
#
#   deploy/install-agent.sh --hub https://hub.example:7070 --token TOKEN [--labels k=v,k=v]
#       [--binary PATH] [--ort-lib PATH] [--root DIR] [--no-start] [--no-enroll]
#
# Puts in place (under --root, default /):
#   /usr/local/bin/flotilla-agent                       the agent (--binary; default: this
#                                                       checkout's target/release build)
#   /usr/local/lib/flotilla/libonnxruntime.so.1.31.1    ONNX Runtime (--ort-lib; default:
#                                                       deploy/fetch-onnxruntime.sh)
#   /etc/systemd/system/flotilla-agent.service          the unit (deploy/systemd/)
#   /etc/flotilla/agent.toml                            the config, mode 0640
#   /var/lib/flotilla-agent/                            the state: key, enrollment, models
# then enrolls (flotilla-agent enroll: a bad token or an unreachable hub fails the install
# here, not at the first boot) and, on a live system with systemd, enables and starts the
# unit. On / as root it also creates the user flotilla-agent and the group flotilla (device
# apps join that group to use the socket /run/flotilla/agent.sock).
#
# --labels are reported to the hub as hardware facts of the device (agent.toml [hardware]).
# The labels deployments select on come from the token (flotilla enroll-token create
# --labels), so a device cannot steer which models it gets.
#
# --no-enroll leaves enrollment to the agent's first start (the token stays in agent.toml):
# for an image of another architecture, whose binary cannot run here.
#
# --root DIR prepares another root (an image being built, or a test's temp folder): no
# users, no systemctl; enrollment still runs, writing DIR/var/lib/flotilla-agent.
# Running it again keeps an existing state folder (an enrolled device stays enrolled) and
# replaces the binary, library, unit and config.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

hub="" token="" labels="" binary="" ort_lib="" root="/" start=1 enroll=1
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --hub) hub=${2:?--hub needs a URL}; shift 2 ;;
    --token) token=${2:?--token needs a token}; shift 2 ;;
    --labels) labels=${2:?--labels needs k=v,k=v}; shift 2 ;;
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --ort-lib) ort_lib=${2:?--ort-lib needs a path}; shift 2 ;;
    --root) root=${2:?--root needs a folder}; shift 2 ;;
    --no-start) start=0; shift ;;
    --no-enroll) enroll=0; shift ;;
    -h|--help) usage ;;
    *) echo "error: unknown argument $1" >&2; usage ;;
  esac
done
[ -n "$hub" ] || { echo "error: --hub URL is required" >&2; usage; }
[ -n "$token" ] || { echo "error: --token TOKEN is required (flotilla enroll-token create)" >&2; usage; }
case "$hub" in
  https://*|http://*) ;;
  *) echo "error: --hub must be an http(s) URL, got $hub" >&2; exit 2 ;;
esac

binary=${binary:-$repo/target/release/flotilla-agent}
[ -x "$binary" ] || { echo "error: no agent binary at $binary (cargo build --release -p flotilla-agent, or pass --binary)" >&2; exit 1; }
ort_lib=${ort_lib:-$("$repo/deploy/fetch-onnxruntime.sh")}
[ -f "$ort_lib" ] || { echo "error: no ONNX Runtime library at $ort_lib" >&2; exit 1; }

root=${root%/}
live=0
if [ -z "$root" ]; then live=1; fi
bin_dir=$root/usr/local/bin
lib_dir=$root/usr/local/lib/flotilla
unit_dir=$root/etc/systemd/system
config_dir=$root/etc/flotilla
state_dir=$root/var/lib/flotilla-agent

if [ "$live" = 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "error: installing on / needs root (or pass --root DIR)" >&2; exit 1; }
  getent group flotilla >/dev/null || groupadd --system flotilla
  getent passwd flotilla-agent >/dev/null ||
    useradd --system --gid flotilla --home-dir /var/lib/flotilla-agent --no-create-home \
      --shell /usr/sbin/nologin flotilla-agent
fi

install -d -m 0755 "$bin_dir" "$lib_dir" "$unit_dir"
install -d -m 0750 "$config_dir"
# Copy then rename: a running agent keeps its open binary, and no half file is ever seen.
install -m 0755 "$binary" "$bin_dir/.flotilla-agent.new"
mv -f "$bin_dir/.flotilla-agent.new" "$bin_dir/flotilla-agent"
install -m 0644 "$ort_lib" "$lib_dir/libonnxruntime.so.1.31.1"
install -m 0644 "$repo/deploy/systemd/flotilla-agent.service" "$unit_dir/flotilla-agent.service"

config=$config_dir/agent.toml
umask 077
{
  echo "# Written by deploy/install-agent.sh; every key is described by flotilla-agent config default."
  echo "hub = \"$hub\""
  echo "enrollment_token = \"$token\""
  echo "state_dir = \"/var/lib/flotilla-agent\""
  echo "socket = \"/run/flotilla/agent.sock\""
  echo "socket_mode = \"0660\""
  echo "ort_lib = \"/usr/local/lib/flotilla/libonnxruntime.so.1.31.1\""
  if [ -n "$labels" ]; then
    echo
    echo "[hardware]"
    IFS=',' read -ra pairs <<<"$labels"
    for pair in "${pairs[@]}"; do
      key=${pair%%=*} value=${pair#*=}
      case "$key" in
        ''|*[!A-Za-z0-9_.-]*) echo "error: label key '$key' must be letters, digits, _ . -" >&2; exit 2 ;;
      esac
      [ "$key" != "$pair" ] || { echo "error: label '$pair' is not k=v" >&2; exit 2; }
      value=${value//\\/\\\\}
      echo "$key = \"${value//\"/\\\"}\""
    done
  fi
} >"$config.new"
mv -f "$config.new" "$config"
chmod 0640 "$config"
install -d -m 0700 "$state_dir"

if [ "$enroll" = 1 ]; then
  echo "enrolling with $hub" >&2
  "$bin_dir/flotilla-agent" enroll --config "$config" --state-dir "$state_dir"
else
  echo "not enrolled yet: the agent enrolls at its first start" >&2
fi

if [ "$live" = 1 ]; then
  chown root:flotilla "$config_dir" "$config"
  chown -R flotilla-agent:flotilla "$state_dir"
  if [ "$start" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now flotilla-agent.service
    echo "started: systemctl status flotilla-agent" >&2
  else
    echo "installed; start it with: systemctl daemon-reload && systemctl enable --now flotilla-agent" >&2
  fi
else
  echo "installed under $root; enable flotilla-agent.service when that root boots" >&2
fi
