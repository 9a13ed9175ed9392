#!/usr/bin/env bash
# distro-registry next to r-nacos and next to the floor, on this machine,
# with one distro-loadgen invocation per scenario.
#
#   bench/compare.sh SCENARIO [extra distro-loadgen flags]
#   bench/compare.sh all        # the four reported scenarios
#
# SCENARIO is burst, beat, query or biglist (a query over one service of
# 8,500 instances). Writes bench/results/<scenario>.md (table, ratios) and
# bench/results/<scenario>.svg (percentile curves). Installs r-nacos 0.8.8
# into bench/.peers (git-ignored) on first use; uses nginx as the floor if
# installed, else loadgen/examples/floor.rs. Everything talks to 127.0.0.1.
set -euo pipefail
# Each run starts empty (no store read back from an earlier run) unless
# DISTRO_REGISTRY_DATA_DIR says otherwise.
export DISTRO_REGISTRY_DATA_DIR=${DISTRO_REGISTRY_DATA_DIR:-none}
cd "$(dirname "$0")/.."
SCENARIO=${1:?usage: bench/compare.sh burst|beat|query|biglist|all [loadgen flags]}
shift || true
if [ "$SCENARIO" = all ]; then
  for s in burst beat query biglist; do "$0" "$s" "$@"; done
  exit 0
fi
DR_PORT=18848 RN_PORT=18948 FLOOR_PORT=18850
CORES=${CORES:-1}
# Each server runs on SERVER_CPUS, the generator (one thread) on LOADGEN_CPUS.
SERVER_CPUS=${SERVER_CPUS:-0}
LOADGEN_CPUS=${LOADGEN_CPUS:-1}
ON_SERVER="taskset -c $SERVER_CPUS"

cargo build --release --quiet -p distro-registry -p distro-loadgen --bins --example floor
if [ ! -x bench/.peers/bin/rnacos ]; then
  echo "installing r-nacos 0.8.8 into bench/.peers (one time, several minutes)" >&2
  cargo install rnacos --version 0.8.8 --root bench/.peers --locked
fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_http() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 did not come up" >&2; return 1; }

$ON_SERVER target/release/distro-registry --bind 127.0.0.1:$DR_PORT --cores "$CORES" --log-level warn &
DR_PID=$!; PIDS+=($DR_PID)
RN_DIR=$(mktemp -d)
( cd "$RN_DIR" && RNACOS_HTTP_PORT=$RN_PORT RNACOS_GRPC_PORT=$((RN_PORT + 1000)) RNACOS_HTTP_CONSOLE_PORT=0 \
  RNACOS_HTTP_WORKERS=$CORES RNACOS_DATA_DIR="$RN_DIR/db" exec $ON_SERVER "$OLDPWD/bench/.peers/bin/rnacos" ) >"$RN_DIR/log" 2>&1 &
RN_PID=$!; PIDS+=($RN_PID)
if command -v nginx >/dev/null; then
  # shellcheck source=bench/floor.sh
  . bench/floor.sh
  start_nginx_floor $FLOOR_PORT
  PIDS+=($FLOOR_MASTER)
  taskset -pc "$SERVER_CPUS" "$FLOOR_PID" >/dev/null
  FLOOR_NAME="nginx"
else
  $ON_SERVER target/release/examples/floor 127.0.0.1:$FLOOR_PORT &
  FLOOR_PID=$!; PIDS+=($FLOOR_PID)
  FLOOR_NAME="floor"
fi
wait_http $DR_PORT; wait_http $RN_PORT; wait_http $FLOOR_PORT

case "$SCENARIO" in
  burst)   ARGS=(--scenario burst --instances 10000 --services 1000 --connections 256) ;;
  beat)    ARGS=(--scenario beat --instances 100000 --services 1000 --connections 256 --duration 20) ;;
  query)   ARGS=(--scenario query --instances 10000 --services 1000 --connections 64 --duration 10) ;;
  biglist) ARGS=(--scenario query --instances 8500 --services 1 --connections 8 --duration 10) ;;
  *) echo "unknown scenario $SCENARIO" >&2; exit 2 ;;
esac
OUT=bench/results/tmp/$SCENARIO
rm -rf "$OUT"; mkdir -p bench/results
# r-nacos leaves paced beats unsent: its errors are results, not a failed run.
TABLE=$(taskset -c "$LOADGEN_CPUS" target/release/distro-loadgen --threads 1 --max-error-ratio 1 \
  --target http://127.0.0.1:$DR_PORT --label distro-registry --server-pid $DR_PID \
  --target http://127.0.0.1:$RN_PORT --label r-nacos --server-pid $RN_PID \
  --target http://127.0.0.1:$FLOOR_PORT --label "$FLOOR_NAME" --server-pid "$FLOOR_PID" \
  "${ARGS[@]}" "$@" --out "$OUT")
echo "$TABLE"
cp "$OUT/latency.svg" "bench/results/$SCENARIO.svg"
{
  echo "# $SCENARIO"
  echo
  echo "Command: \`bench/compare.sh $SCENARIO $*\` (distro-registry --cores $CORES, r-nacos 0.8.8 with $CORES HTTP worker(s), floor: $FLOOR_NAME; servers on CPU $SERVER_CPUS, distro-loadgen with one thread on CPU $LOADGEN_CPUS), $(date -u +%Y-%m-%d)."
  echo "loadgen flags: \`${ARGS[*]} $*\`"
  echo
  echo "The floor answers every request with a constant body and keeps no state, so its list checks fail by design."
  echo
  echo '```'
  echo "$TABLE"
  echo '```'
  echo
  echo "![latency]($SCENARIO.svg)"
} > "bench/results/$SCENARIO.md"
echo "wrote bench/results/$SCENARIO.md" >&2
