#!/bin/bash
# make down: stop the VMs of this all-in-one Bramble, then brambled itself (by its pid file).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
STATE=${BRAMBLE_STATE_DIR:-/var/lib/bramble}
PORT=${BRAMBLE_API__PORT:-8470}
URL="http://127.0.0.1:$PORT"

pid=$(cat "$STATE/brambled.pid" 2>/dev/null || true)
if [ -z "$pid" ] || ! tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q brambled; then
  echo "brambled is not running"
  exit 0
fi
if [ -x "$VENV/bin/bramble" ]; then
  for vm in $("$VENV/bin/bramble" --url "$URL" vm list --json 2>/dev/null |
              "$VENV/bin/python" -c 'import json,sys; print(" ".join(v["name"] for v in json.load(sys.stdin) if v["state"] in ("running","paused")))'); do
    echo "stopping VM $vm"
    "$VENV/bin/bramble" --url "$URL" vm stop "$vm" || true
  done
fi
echo "stopping brambled (pid $pid)"
kill -TERM "$pid"
for _ in $(seq 1 300); do
  kill -0 "$pid" 2>/dev/null || { echo "stopped"; exit 0; }
  sleep 0.1
done
echo "brambled did not stop within 30 s; killing pid $pid" >&2
kill -KILL "$pid"
