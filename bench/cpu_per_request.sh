#!/usr/bin/env bash
# Server CPU time per request for liveness (our own floor), beat, list of
# 10 instances, instance detail, register (a new instance each time) and the list of one
# service with 8,500 instances, read from /proc/PID/stat before and after a
# wrk run of fixed duration. If nginx is installed, its static 200 is
# measured the same way, in the same window, as the machine's floor.
#
#   bench/cpu_per_request.sh [CORES] [SECONDS] [CONNECTIONS]
#
# Needs wrk (Debian package `wrk`). Builds the release binary. The load
# generator shares the machine's cores with the server, so requests/s is
# bounded by wrk; CPU per request is the figure to compare. BIN=path runs
# another build (an A/B against an older commit).
set -euo pipefail
# Each run starts empty (no store read back from an earlier run) unless
# DISTRO_REGISTRY_DATA_DIR says otherwise.
export DISTRO_REGISTRY_DATA_DIR=${DISTRO_REGISTRY_DATA_DIR:-none}
cd "$(dirname "$0")/.."
CORES=${1:-1}
SECS=${2:-10}
CONNS=${3:-64}
PORT=${PORT:-18848}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 1; }
cargo build --release --quiet
BIN=${BIN:-target/release/distro-registry}
"$BIN" --bind 127.0.0.1:$PORT --cores "$CORES" --log-level warn &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/nacos/v1/console/health/liveness" >/dev/null && break; sleep 0.1; done
python3 bench/seed.py 127.0.0.1:$PORT
TCK=$(getconf CLK_TCK)
# With one shard (pinned to core 0), keep wrk on the other core.
# WRK_CPUS=1 pins wrk to CPU 1 whatever the core count (the server's
# shards then share CPU 1 with it, as issue 11's table has it).
WRK_PIN=""
if [ -n "${WRK_CPUS:-}" ]; then WRK_PIN="taskset -c $WRK_CPUS";
elif [ "$CORES" = 1 ] && command -v taskset >/dev/null; then WRK_PIN="taskset -c 1"; fi
cpu_ticks() { awk '{print $14, $15}' /proc/$1/stat; }
# run LABEL PID LUA URL [CONNECTIONS]; ONLY="beat detail" runs only those
# scripts.
run() {
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $3 "* ]]; then return 0; fi
  local before after out reqs rps p50 p99 errs us
  before=$(cpu_ticks "$2")
  out=$($WRK_PIN wrk -t1 -c"${5:-$CONNS}" -d"${SECS}s" --latency -s "bench/wrk/$3.lua" "$4" 2>&1)
  [ -n "${BENCH_DEBUG:-}" ] && echo "$out" >&2
  after=$(cpu_ticks "$2")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  errs=$(echo "$out" | grep -E "Non-2xx|Socket errors" | tr -s ' ' || true)
  us=$(echo "$before $after" | awk -v tck="$TCK" -v n="$reqs" '{u = ($3 - $1) / tck * 1e6 / n; k = ($4 - $2) / tck * 1e6 / n; printf "%.2f us | %.2f us | %.2f us", u + k, u, k}')
  echo "| $1 | $reqs | $rps | $p50 | $p99 | $us |${errs:+ $errs}"
}
echo "| operation | requests | req/s | p50 | p99 | server CPU per request | of which user | of which kernel |"
echo "|---|---|---|---|---|---|---|---|"
URL="http://127.0.0.1:$PORT"
run liveness $PID liveness "$URL"
run beat $PID beat "$URL"
run "list (10 instances)" $PID list "$URL"
run "instance detail" $PID detail "$URL"
run "register (new instance)" $PID register "$URL"
run "list (8,500 instances)" $PID biglist "$URL" 8
if command -v nginx >/dev/null; then
  # shellcheck source=bench/floor.sh
  . bench/floor.sh
  start_nginx_floor $((PORT + 1))
  taskset -pc 0 "$FLOOR_PID" >/dev/null 2>&1 || true
  run "nginx static 200 (floor)" "$FLOOR_PID" static "http://127.0.0.1:$((PORT + 1))"
  kill "$FLOOR_MASTER"; wait "$FLOOR_MASTER" 2>/dev/null || true
fi
