#!/usr/bin/env bash
# Cross-core messages, batches and wake-ups per request, by operation, on a
# node with CORES shards (docs/scaling.md): seed 1,000 instances, 1 s of wrk
# to warm the read views, then 3 s of wrk with 32 connections; the deltas
# of the /metrics counters over the requests answered.
#
#   bench/cross_core.sh 2
set -euo pipefail
# Each run starts empty (no store read back from an earlier run) unless
# DISTRO_REGISTRY_DATA_DIR says otherwise.
export DISTRO_REGISTRY_DATA_DIR=${DISTRO_REGISTRY_DATA_DIR:-none}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p distro-registry
CORES=${1:-2}; PORT=${PORT:-18848}
target/release/distro-registry --bind 127.0.0.1:$PORT --cores $CORES --log-level warn & PID=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:$PORT/nacos/v1/console/health/liveness >/dev/null && break; sleep 0.1; done
python3 bench/seed.py 127.0.0.1:$PORT >/dev/null
m() { curl -s http://127.0.0.1:$PORT/metrics | awk -v n="$1" '$1==n {print $2}'; }
req() { curl -s http://127.0.0.1:$PORT/metrics | awk '/^registry_requests_total\{/ {s+=$2} END {print s}'; }
for op in beat list detail register; do
  # warm-up: views get built
  wrk -t1 -c32 -d1s -s bench/wrk/$op.lua http://127.0.0.1:$PORT >/dev/null 2>&1
  m0=$(m registry_cross_core_messages_total); b0=$(m registry_cross_core_batches_total); w0=$(m registry_cross_core_wakeups_total); r0=$(req)
  wrk -t1 -c32 -d3s -s bench/wrk/$op.lua http://127.0.0.1:$PORT >/dev/null 2>&1
  m1=$(m registry_cross_core_messages_total); b1=$(m registry_cross_core_batches_total); w1=$(m registry_cross_core_wakeups_total); r1=$(req)
  echo "$CORES $op $(echo "$m0 $m1 $b0 $b1 $w0 $w1 $r0 $r1" | awk '{n=$8-$7; printf "messages/req %.3f batches/req %.4f wakeups/req %.4f (requests %d)", ($2-$1)/n, ($4-$3)/n, ($6-$5)/n, n}')"
done
kill $PID; wait $PID 2>/dev/null
