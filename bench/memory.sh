#!/usr/bin/env bash
# Peak memory of a register burst (issue 11: <= 300 bytes per instance).
#
#   bench/memory.sh [INSTANCES] [SERVICES] [CORES] [AFTER_S]
#
# Starts a fresh node (`--data-dir none`, BIN or target/release) on port
# 18848, runs `distro-loadgen --scenario burst` (register, list,
# deregister) on CPU 1, and prints the node's RSS before, its peak (VmHWM),
# the bytes per instance at the peak, RSS right after the burst and
# AFTER_S seconds later (default 60; 0 skips the wait).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
SERVICES=${2:-10000}
CORES=${3:-}
AFTER=${4:-60}
BIN=${BIN:-target/release/distro-registry}
LG=${LG:-target/release/distro-loadgen}
PORT=18848
if ss -ltn | grep -q ":$PORT "; then
  echo "port $PORT is taken: a leftover node?" >&2
  exit 1
fi
args=(--bind "127.0.0.1:$PORT" --data-dir none)
[ -n "$CORES" ] && args+=(--cores "$CORES")
out=$(mktemp -d)
"$BIN" "${args[@]}" >"$out/node.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/nacos/v1/ns/operator/metrics" >/dev/null && break
  sleep 0.1
done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
before=$(rss)
# RSS every 0.5 s through the run: where the peak falls (register, list or
# deregister phase).
( while kill -0 $pid 2>/dev/null; do echo "$(date +%s.%N | cut -c1-14) $(rss)"; sleep 0.5; done ) >"$out/rss.log" 2>/dev/null &
sampler=$!
taskset -c 1 "$LG" --target "http://127.0.0.1:$PORT" --threads 1 --connections 128 \
  --scenario burst --instances "$N" --services "$SERVICES" --out "$out/lg" >"$out/lg.log"
peak=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
after=$(rss)
kill $sampler 2>/dev/null || true
echo "rss samples (s since start, KiB):"
awk 'NR==1 {t0=$1} {printf "  %.1f %s\n", $1-t0, $2}' "$out/rss.log" | awk 'NR%4==1' | tr '\n' ' '; echo
echo "instances $N services $SERVICES cores ${CORES:-default}"
echo "rss before KiB $before"
echo "peak KiB $peak"
echo "bytes per instance at the peak $(( (peak - before) * 1024 / N ))"
echo "rss right after the burst KiB $after"
if [ "$AFTER" -gt 0 ]; then
  sleep "$AFTER"
  echo "rss ${AFTER} s later KiB $(rss)"
fi
