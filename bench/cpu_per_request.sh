#!/usr/bin/env bash
# Server CPU time per request for register, beat, list(10) and liveness,
# read from /proc/PID/stat before and after a wrk run of fixed duration.
#
#   bench/cpu_per_request.sh [CORES] [SECONDS] [CONNECTIONS]
#
# Needs wrk (Debian package `wrk`). Builds the release binary. The load
# generator shares the machine's cores with the server, so requests/s is
# bounded by wrk; CPU per request is the figure to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
CORES=${1:-1}
SECS=${2:-10}
CONNS=${3:-64}
PORT=${PORT:-18848}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 1; }
cargo build --release --quiet
target/release/distro-registry --bind 127.0.0.1:$PORT --cores "$CORES" --log-level warn &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/nacos/v1/console/health/liveness" >/dev/null && break; sleep 0.1; done
python3 bench/seed.py 127.0.0.1:$PORT
TCK=$(getconf CLK_TCK)
# With one shard (pinned to core 0), keep wrk on the other core.
WRK_PIN=""
if [ "$CORES" = 1 ] && command -v taskset >/dev/null; then WRK_PIN="taskset -c 1"; fi
cpu_ticks() { awk '{print $14, $15}' /proc/$PID/stat; }
echo "| operation | requests | req/s | p50 | p99 | server CPU per request | of which user | of which kernel |"
echo "|---|---|---|---|---|---|---|---|"
for op in liveness beat list register; do
  before=$(cpu_ticks)
  out=$($WRK_PIN wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s bench/wrk/$op.lua "http://127.0.0.1:$PORT" 2>&1)
  after=$(cpu_ticks)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  errs=$(echo "$out" | grep -E "Non-2xx|Socket errors" || true)
  us=$(echo "$before $after" | awk -v tck="$TCK" -v n="$reqs" '{u = ($3 - $1) / tck * 1e6 / n; k = ($4 - $2) / tck * 1e6 / n; printf "%.2f us | %.2f us | %.2f us", u + k, u, k}')
  echo "| $op | $reqs | $rps | $p50 | $p99 | $us |${errs:+ $errs}"
done
