#!/usr/bin/env bash
# A 3-node distro-registry cluster on this machine (SPEC 4; issue 4's
# benchmark): register throughput and latency spread over all nodes, time
# until a write is visible on every node, and the snapshot load time of a
# node joining a cluster that holds INSTANCES instances.
#
#   bench/cluster.sh [register|converge|snapshot|all]
#
# Env: INSTANCES (snapshot, default 1000000), BURST (register, 20000),
# CORES (per node, 1). Nodes listen on 127.0.0.1:19101-19103; results go
# to bench/results/cluster-*.md. Everything talks to 127.0.0.1, and every
# phase is bounded by distro-loadgen's own limits.
set -euo pipefail
# Each run starts empty (no store read back from an earlier run) unless
# DISTRO_REGISTRY_DATA_DIR says otherwise.
export DISTRO_REGISTRY_DATA_DIR=${DISTRO_REGISTRY_DATA_DIR:-none}
cd "$(dirname "$0")/.."
WHAT=${1:-all}
if [ "$WHAT" = all ]; then
  for w in register converge snapshot; do "$0" "$w"; done
  exit 0
fi
CORES=${CORES:-1}
TOKEN=bench-token
A=(127.0.0.1:19101 127.0.0.1:19102 127.0.0.1:19103)
PEERS=$(IFS=,; echo "${A[*]}")
OUT=bench/results
mkdir -p "$OUT"
cargo build --release --quiet -p distro-registry -p distro-loadgen --bins

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
start() { # index, log file
  target/release/distro-registry --bind "${A[$1]}" --peers "$PEERS" --cluster-token "$TOKEN" \
    --cores "$CORES" --log-level info 2>"$2" &
  PIDS+=($!)
}
wait_ready() {
  for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$1/nacos/v1/console/health/readiness")" = 200 ] && return 0
    sleep 0.05
  done
  echo "$1 never became ready" >&2; return 1
}
wait_up() { # every node sees 3 members UP
  for a in "${A[@]}"; do
    for _ in $(seq 200); do
      [ "$(curl -s "http://$a/nacos/v1/core/cluster/nodes" | grep -o '"state":"UP"' | wc -l)" = 3 ] && break
      sleep 0.1
    done
  done
}
LOGDIR=$(mktemp -d)
TARGETS=(--target "http://${A[0]}" --target "http://${A[1]}" --target "http://${A[2]}")

case "$WHAT" in
register)
  for i in 0 1 2; do start $i "$LOGDIR/n$i.log"; done
  for a in "${A[@]}"; do wait_ready "$a"; done; wait_up
  BURST=${BURST:-20000}
  target/release/distro-loadgen "${TARGETS[@]}" --spread --scenario burst \
    --instances "$BURST" --services 1000 --connections 64 --threads 1 --seed "$RANDOM" \
    --out "$LOGDIR/register" | tee "$OUT/cluster-register.md"
  echo "command: bench/cluster.sh register (BURST=$BURST, CORES=$CORES, 3 nodes and the generator on this machine)" >> "$OUT/cluster-register.md"
  grep -h "registry_forwarded_total \|registry_datums_sent_total " <(curl -s "http://${A[0]}/metrics") || true
  ;;
converge)
  for i in 0 1 2; do start $i "$LOGDIR/n$i.log"; done
  for a in "${A[@]}"; do wait_ready "$a"; done; wait_up
  target/release/distro-loadgen "${TARGETS[@]}" --scenario converge \
    --instances 2000 --services 200 --connections 16 --threads 1 --seed "$RANDOM" \
    --out "$LOGDIR/converge" | tee "$OUT/cluster-converge.md"
  echo "command: bench/cluster.sh converge (2,000 writes on node 1, polled on nodes 2 and 3 every 5 ms; sync delay 100 ms)" >> "$OUT/cluster-converge.md"
  ;;
snapshot)
  INSTANCES=${INSTANCES:-1000000}
  start 0 "$LOGDIR/n0.log"; start 1 "$LOGDIR/n1.log"
  wait_ready "${A[0]}"; wait_ready "${A[1]}"
  # The fixture goes in through the replication endpoint (both running
  # nodes merge it), in batches of 100 services.
  python3 bench/cluster_fixture.py "$INSTANCES" "$TOKEN" "${A[0]}" "${A[1]}"
  t0=$(date +%s%N)
  start 2 "$LOGDIR/n2.log"
  wait_ready "${A[2]}"
  t1=$(date +%s%N)
  line=$(grep "snapshot loaded" "$LOGDIR/n2.log" | sed 's/\x1b\[[0-9;]*m//g; s/.*snapshot loaded //' | paste -sd';' || true)
  count=$(curl -s "http://${A[2]}/metrics" | grep '^registry_instances ' | cut -d' ' -f2)
  rss=$(grep VmRSS "/proc/${PIDS[2]}/status" | awk '{print $2}')
  {
    echo "# Snapshot load of a joining node"
    echo
    echo "| instances in the cluster | joiner holds | start to ready | joiner's log | joiner RSS |"
    echo "|---|---|---|---|---|"
    echo "| $INSTANCES | $count | $(( (t1 - t0) / 1000000 )) ms | $line | $((rss / 1024)) MiB |"
    echo
    echo "command: bench/cluster.sh snapshot (INSTANCES=$INSTANCES, CORES=$CORES)"
  } | tee "$OUT/cluster-snapshot.md"
  ;;
*) echo "usage: bench/cluster.sh register|converge|snapshot|all" >&2; exit 2 ;;
esac
rm -rf "$LOGDIR"
