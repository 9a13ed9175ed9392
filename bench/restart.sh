#!/usr/bin/env bash
# Start-to-ready of a standalone node holding N instances (issue 12):
# fills a node with a data directory (loadgen burst --keep), kill -9s it,
# starts it again and times exec to ready with every instance listed.
#
#   bench/restart.sh [INSTANCES] [SERVICES]
#
# Prints the store file size per instance, the restart time, the node's
# own "store read back" line and its RSS once ready.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
S=${2:-10000}
PORT=${PORT:-18848}
DIR=${DIR:-/tmp/dr-restart-bench}
BIN=target/release/distro-registry
cargo build --release --quiet --workspace
rm -rf "$DIR"
# Long timeouts: nothing may expire while the node is filled.
ARGS=(--bind 127.0.0.1:$PORT --log-level info --data-dir "$DIR" --grpc-port 0
      --unhealthy-timeout-ms 3600000 --delete-timeout-ms 7200000)
"$BIN" "${ARGS[@]}" 2>/tmp/dr-restart-1.log &
PID=$!
trap 'kill -9 $PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/nacos/v1/console/health/liveness" >/dev/null && break; sleep 0.1; done
target/release/distro-loadgen --target "http://127.0.0.1:$PORT" --scenario burst --keep \
  --instances "$N" --services "$S" --connections 256 --out /tmp/dr-restart-fill >/dev/null
sleep 1   # the last changes are saved behind within 200 ms
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
echo "instances before: $(metric registry_instances), store file: $(metric registry_store_file_bytes) bytes, $(metric registry_store_bytes_per_instance) bytes per instance"
kill -9 $PID; wait $PID 2>/dev/null || true
# io_uring closes a killed process's sockets a moment after it is gone.
while ss -ltn | grep -q ":$PORT "; do sleep 0.05; done
T0=$(date +%s%N)
"$BIN" "${ARGS[@]}" 2>/tmp/dr-restart-2.log &
PID=$!
until curl -sf "http://127.0.0.1:$PORT/nacos/v1/console/health/readiness" >/dev/null 2>&1; do sleep 0.01; done
T1=$(date +%s%N)
echo "restart to ready: $(( (T1 - T0) / 1000000 )) ms; instances after: $(metric registry_instances)"
grep "store read back" /tmp/dr-restart-2.log | sed 's/^.*INFO //'
echo "RSS once ready: $(awk '/VmRSS/ {print $2, $3}' /proc/$PID/status)"
