#!/bin/bash
# run_all.sh: every Bramble benchmark in sequence, with modest defaults (about 5-8 minutes
# on 2 cores under TCG). Each script starts its own brambled on a free loopback port with a
# temp state dir, and stops everything it started (by PID) before the next one runs.
#
#   bench/run_all.sh            # from the repo root, or from anywhere
#   PYTHON=/path/to/python bench/run_all.sh
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
cd "$REPO"

run() {
  echo
  echo "=================================================================== $*"
  local start=$SECONDS
  "$PYTHON" "$@"
  echo "(took $((SECONDS - start)) s)"
}

echo "Bramble benchmarks, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
run bench/idle_rss.py --rounds 1
run bench/api_create.py --rounds 1 -n 500 -c 8
run bench/vm_boot.py --rounds 5 --multi-rounds 1 --vms 20
run bench/tftp_throughput.py --rounds 3
run bench/rbd_clone.py --rounds 7
run bench/cache_read.py --rounds 3
run bench/cache_boot.py --vms 4
run bench/http_boot.py
run bench/dhcp_rate.py
run bench/dhcp_instructions.py --exchanges 300 --rate 20
run bench/secgroup_apply.py
run bench/ipam_alloc.py
run bench/pool_usage.py
run bench/netboot.py --rounds 3 --modes bios-http,uefi-http
echo
echo "all benchmarks done in $SECONDS s"
