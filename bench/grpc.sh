#!/usr/bin/env bash
# Nacos 2.x (gRPC) figures on this machine, in one run:
#   1. burst (register, list, deregister) over gRPC and over HTTP on
#      distro-registry, and over gRPC on r-nacos 0.8.8: rates and server
#      CPU per operation, side by side;
#   2. push fan-out: SUBSCRIBERS gRPC subscribers of one service, CHANGES
#      changes one at a time (distro-registry, then r-nacos);
#   3. CLIENTS connected gRPC clients on one distro-registry node: its
#      memory per connection (VmRSS before and while they are connected).
#
#   bench/grpc.sh            # writes bench/results/grpc.md
#
# Servers on CPU $SERVER_CPUS with one shard / one worker, distro-loadgen
# with one thread on CPU $LOADGEN_CPUS. Installs r-nacos into bench/.peers
# on first use (as bench/compare.sh). Everything talks to 127.0.0.1.
set -euo pipefail
# Each run starts empty (no store read back from an earlier run) unless
# DISTRO_REGISTRY_DATA_DIR says otherwise.
export DISTRO_REGISTRY_DATA_DIR=${DISTRO_REGISTRY_DATA_DIR:-none}
cd "$(dirname "$0")/.."
DR_PORT=18848 RN_PORT=18948
INSTANCES=${INSTANCES:-10000} SERVICES=${SERVICES:-1000} CONNECTIONS=${CONNECTIONS:-256}
SUBSCRIBERS=${SUBSCRIBERS:-1000} CHANGES=${CHANGES:-50} CLIENTS=${CLIENTS:-10000}
SERVER_CPUS=${SERVER_CPUS:-0} LOADGEN_CPUS=${LOADGEN_CPUS:-1}
ON_SERVER="taskset -c $SERVER_CPUS"
LG="taskset -c $LOADGEN_CPUS target/release/distro-loadgen --threads 1 --max-error-ratio 1"

cargo build --release --quiet -p distro-registry -p distro-loadgen --bins
if [ ! -x bench/.peers/bin/rnacos ]; then
  echo "installing r-nacos 0.8.8 into bench/.peers (one time, several minutes)" >&2
  cargo install rnacos --version 0.8.8 --root bench/.peers --locked
fi
# 10,000 clients need 10,000 descriptors in the generator and the node.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_http() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 did not come up" >&2; return 1; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start_dr() {
  $ON_SERVER target/release/distro-registry --bind 127.0.0.1:$DR_PORT --cores 1 --log-level warn \
    --max-connections $((CLIENTS + 1000)) --subscribers-per-service-max $((CLIENTS + 1000)) &
  DR_PID=$!; PIDS+=($DR_PID); wait_http $DR_PORT
}
start_rn() {
  RN_DIR=$(mktemp -d)
  ( cd "$RN_DIR" && RNACOS_HTTP_PORT=$RN_PORT RNACOS_GRPC_PORT=$((RN_PORT + 1000)) RNACOS_HTTP_CONSOLE_PORT=0 \
    RNACOS_HTTP_WORKERS=1 RNACOS_DATA_DIR="$RN_DIR/db" exec $ON_SERVER "$OLDPWD/bench/.peers/bin/rnacos" ) >"$RN_DIR/log" 2>&1 &
  RN_PID=$!; PIDS+=($RN_PID); wait_http $RN_PORT
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

OUT=bench/results/tmp/grpc; rm -rf "$OUT"; mkdir -p "$OUT"
BURST=(--scenario burst --instances "$INSTANCES" --services "$SERVICES" --connections "$CONNECTIONS")

start_dr; start_rn
T1=$($LG --protocol grpc "${BURST[@]}" \
  --target http://127.0.0.1:$DR_PORT --label distro-registry-grpc --server-pid $DR_PID \
  --target http://127.0.0.1:$RN_PORT --label r-nacos-grpc --server-pid $RN_PID --out "$OUT/burst-grpc")
T2=$($LG "${BURST[@]}" --target http://127.0.0.1:$DR_PORT --label distro-registry-http --server-pid $DR_PID \
  --out "$OUT/burst-http")
PUSH=(--protocol grpc --scenario push --instances "$CHANGES" --connections "$SUBSCRIBERS")
T3=$($LG "${PUSH[@]}" --target http://127.0.0.1:$DR_PORT --label distro-registry --server-pid $DR_PID \
  --target http://127.0.0.1:$RN_PORT --label r-nacos --server-pid $RN_PID --out "$OUT/push")
stop $RN_PID

# Memory per connection: a fresh node, CLIENTS subscribers connected.
stop $DR_PID; start_dr
sleep 1; BEFORE=$(rss_kb $DR_PID); PEAK=$BEFORE
$LG --protocol grpc --scenario push --instances 3 --connections "$CLIENTS" --timeout-ms 30000 \
  --target http://127.0.0.1:$DR_PORT --label distro-registry --server-pid $DR_PID --out "$OUT/clients" > "$OUT/clients.txt" &
LGP=$!
while kill -0 $LGP 2>/dev/null; do
  R=$(rss_kb $DR_PID); [ "$R" -gt "$PEAK" ] && PEAK=$R; sleep 0.2
done
wait $LGP || true
T4=$(cat "$OUT/clients.txt")
PER_CONN=$(( (PEAK - BEFORE) * 1024 / CLIENTS ))

{
  echo "# gRPC (Nacos 2.x clients)"
  echo
  echo "Command: \`bench/grpc.sh\` ($(date -u +%Y-%m-%d)); servers on CPU $SERVER_CPUS (distro-registry --cores 1, r-nacos 0.8.8 with 1 HTTP worker), distro-loadgen with one thread on CPU $LOADGEN_CPUS."
  echo
  echo "## Burst: $INSTANCES instances, $SERVICES services, $CONNECTIONS clients (gRPC) or connections (HTTP)"
  echo '```'; echo "$T1"; echo "$T2"; echo '```'
  echo
  echo "## Push fan-out: $SUBSCRIBERS subscribers of one service, $CHANGES changes one at a time"
  echo '```'; echo "$T3"; echo '```'
  echo
  echo "## $CLIENTS connected clients on one node"
  echo '```'; echo "$T4"; echo '```'
  echo "VmRSS before: $BEFORE KiB; peak while connected: $PEAK KiB; per connection: $PER_CONN bytes."
} > bench/results/grpc.md
cat bench/results/grpc.md
