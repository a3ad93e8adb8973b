#!/bin/bash
# make up: start an all-in-one brambled on this host and boot a demo VM. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
STATE=${BRAMBLE_STATE_DIR:-/var/lib/bramble}
PORT=${BRAMBLE_API__PORT:-8470}
URL="http://127.0.0.1:$PORT"
GUESTS=${BRAMBLE_GUEST_CACHE:-/var/cache/bramble/guests}
CLI_DIR=${XDG_CONFIG_HOME:-$HOME/.config}/bramble
bramble() { "$VENV/bin/bramble" --url "$URL" "$@"; }
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

daemon_pid() {  # the pid of our brambled, if it runs
  local pid
  pid=$(cat "$STATE/brambled.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q brambled && echo "$pid"
}

say "demo guest (Debian cloud kernel + busybox initramfs)"
scripts/build-guest.sh x86_64 "$GUESTS/x86_64"

mkdir -p "$STATE"
if pid=$(daemon_pid); then
  say "brambled already running (pid $pid)"
else
  say "starting brambled (state in $STATE, log in $STATE/brambled.log)"
  setsid "$VENV/bin/brambled" --state-dir "$STATE" >>"$STATE/brambled.log" 2>&1 </dev/null &
  started=$!
  for _ in $(seq 1 600); do
    curl -sf "$URL/v1/health" >/dev/null 2>&1 && break
    if ! kill -0 "$started" 2>/dev/null; then
      echo "brambled exited during start-up; the end of its log:" >&2
      tail -n 20 "$STATE/brambled.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  curl -sf "$URL/v1/health" >/dev/null || { echo "brambled did not answer on $URL within 60 s" >&2; exit 1; }
fi

# The CLI finds the API and the admin token here.
mkdir -p "$CLI_DIR"
umask 077
printf 'url = "%s"\ntoken = "%s"\n' "$URL" "$(cat "$STATE/admin.token")" > "$CLI_DIR/cli.toml.tmp"
mv "$CLI_DIR/cli.toml.tmp" "$CLI_DIR/cli.toml"
umask 022

if ! bramble image show demo >/dev/null 2>&1; then
  say "importing the demo image"
  bramble image import "$GUESTS/x86_64/disk.qcow2" --name demo --arch x86_64 \
    --kernel "$GUESTS/x86_64/kernel" --initrd "$GUESTS/x86_64/initrd.gz" --cmdline "console=ttyS0 quiet panic=-1"
fi
if ! bramble vm show demo >/dev/null 2>&1; then
  say "creating the demo VM"
  bramble vm create demo --image demo --cpus 1 --memory 256 --disk-size 1
elif ! bramble vm show demo --json | grep -q '"state": *"running"'; then
  say "starting the demo VM"
  bramble vm start demo
fi

say "waiting for the guest to reach userspace"
for _ in $(seq 1 1200); do
  bramble vm console demo 2>/dev/null | grep -q BRAMBLE-GUEST-UP && break
  sleep 0.1
done
bramble vm show demo
echo
say "console (tail)"
bramble vm console demo | tail -n 12
if ! bramble vm console demo | grep -q BRAMBLE-GUEST-UP; then
  echo "the demo VM did not print its marker within 120 s" >&2
  exit 1
fi
echo
say "Bramble is up: try 'bramble vm list', 'bramble node list', 'bramble event list'. 'make down' stops it."
