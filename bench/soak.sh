#!/usr/bin/env bash
# Soak (issue 5; a benchmark, not CI): a 3-node cluster under the `storm`
# scenario for DURATION seconds (default 600) while one node is killed with
# SIGKILL and restarted every KILL_EVERY seconds (default 60), round robin.
# Alongside the storm, a fixed fleet of FLEET instances (200 services)
# beats every 5 s through all nodes; every 2 s ten of its services are
# listed on each ready node, so an instance of the fleet that a node lost
# shows as a sample below FLEET/200.
#
#   bench/soak.sh            # writes bench/results/soak.md (+ storm/ and fleet/ outputs)
#
# STORM_INSTANCES (default 100,000) bounds the storm and its cleanup.
# Everything talks to 127.0.0.1; every loop is bounded by DURATION.
set -euo pipefail
# Each run starts empty (no store read back from an earlier run) unless
# DISTRO_REGISTRY_DATA_DIR says otherwise.
export DISTRO_REGISTRY_DATA_DIR=${DISTRO_REGISTRY_DATA_DIR:-none}
cd "$(dirname "$0")/.."
DURATION=${DURATION:-600}
KILL_EVERY=${KILL_EVERY:-60}
FLEET=${FLEET:-2000}
TOKEN=soak-token
A=(127.0.0.1:19201 127.0.0.1:19202 127.0.0.1:19203)
PEERS=$(IFS=,; echo "${A[*]}")
OUT=bench/results
LOGDIR=$(mktemp -d)
mkdir -p "$OUT"
cargo build --release --quiet -p distro-registry -p distro-loadgen --bins

declare -A PID
ALL=()
cleanup() {
  for p in "${PID[@]}" "${ALL[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
start() {
  target/release/distro-registry --bind "${A[$1]}" --peers "$PEERS" --cluster-token "$TOKEN" \
    --cores 1 --log-level warn 2>>"$LOGDIR/n$1.log" &
  PID[$1]=$!
}
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$1/nacos/v1/console/health/readiness")" = 200 ]; }
for i in 0 1 2; do start $i; done
for a in "${A[@]}"; do for _ in $(seq 200); do ready "$a" && break; sleep 0.05; done; done
sleep 3

TARGETS=(--target "http://${A[0]}" --target "http://${A[1]}" --target "http://${A[2]}")
target/release/distro-loadgen "${TARGETS[@]}" --spread --scenario beat --instances "$FLEET" \
  --services 200 --connections 16 --threads 1 --duration "$DURATION" --seed 11 --max-error-ratio 1 \
  --out "$OUT/soak-fleet" > "$LOGDIR/fleet.txt" 2>/dev/null &
FLEET_PID=$!; ALL+=($FLEET_PID)
sleep 8   # the fleet registers first
target/release/distro-loadgen "${TARGETS[@]}" --spread --scenario storm --instances "${STORM_INSTANCES:-100000}" \
  --services 500 --connections 32 --threads 1 --duration "$((DURATION - 10))" --seed 12 --max-error-ratio 1 \
  --out "$OUT/soak-storm" > "$LOGDIR/storm.txt" 2>/dev/null &
STORM_PID=$!; ALL+=($STORM_PID)

# Sampler and killer, both bounded by the run's end.
end=$(( $(date +%s) + DURATION - 15 ))
next_kill=$(( $(date +%s) + KILL_EVERY ))
victim=0
kills=0
min_seen=$((FLEET / 200))
dips=0
samples=0
while [ "$(date +%s)" -lt "$end" ]; do
  if [ "$(date +%s)" -ge "$next_kill" ]; then
    kill -9 "${PID[$victim]}" 2>/dev/null || true
    wait "${PID[$victim]}" 2>/dev/null || true
    sleep 1
    start $victim
    kills=$((kills + 1))
    victim=$(( (victim + 1) % 3 ))
    next_kill=$(( $(date +%s) + KILL_EVERY ))
  fi
  # The fleet (seed 11): services lg11-svc-0..199 with FLEET/200 instances
  # each; ten of them are sampled on every ready node.
  for a in "${A[@]}"; do
    ready "$a" || continue
    for s in 0 20 40 60 80 100 120 140 160 180; do
      n=$(curl -s "http://$a/nacos/v1/ns/instance/list?serviceName=lg11-svc-$s" | grep -o '"instanceId"' | wc -l)
      samples=$((samples + 1))
      if [ "$n" -lt $((FLEET / 200)) ]; then
        dips=$((dips + 1)); [ "$n" -lt "$min_seen" ] && min_seen=$n
      fi
    done
  done
  sleep 2
done
wait "$STORM_PID" || true
wait "$FLEET_PID" || true
{
  echo "# Soak: 3 nodes, storm + a beating fleet of $FLEET, one node killed every ${KILL_EVERY} s"
  echo
  echo "duration ${DURATION} s, kills: $kills, fleet service lists sampled on ready nodes: $samples, lists short of $((FLEET / 200)) instances: $dips (fewest: $min_seen)"
  echo
  echo "## Fleet (beats every 5 s through all nodes)"
  echo '```'; cat "$LOGDIR/fleet.txt"; echo '```'
  echo "## Storm"
  echo '```'; cat "$LOGDIR/storm.txt"; echo '```'
  echo
  echo "command: bench/soak.sh (DURATION=$DURATION KILL_EVERY=$KILL_EVERY FLEET=$FLEET)"
} | tee "$OUT/soak.md"
rm -rf "$LOGDIR"
