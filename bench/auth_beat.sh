#!/usr/bin/env bash
# Beat CPU per request with --auth and a valid token against the same
# beats without auth (issue 13: at most 1.1x). Two nodes of one build,
# each one shard pinned to core 0, started side by side; wrk (core 1)
# beats each in turn, ROUNDS times, so that the pairs share the machine's
# state. Server CPU from /proc/PID/stat around each wrk run.
#
#   bench/auth_beat.sh [SECONDS] [ROUNDS] [CONNECTIONS]
#
# Needs wrk. Builds the release binary (BIN=path runs another).
set -euo pipefail
export DISTRO_REGISTRY_DATA_DIR=none
cd "$(dirname "$0")/.."
SECS=${1:-10}
ROUNDS=${2:-3}
CONNS=${3:-64}
PLAIN=${PORT:-18848}
AUTH=$((PLAIN + 1))
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 1; }
cargo build --release --quiet -p distro-registry
BIN=${BIN:-target/release/distro-registry}
TMP=$(mktemp -d)
SECRET=$(head -c 32 /dev/urandom | base64)
HASH=$(echo -n bench-pw | "$BIN" hash-password)
printf '[[users]]\nusername = "bench"\npassword_hash = "%s"\nroles = ["ROLE_ADMIN"]\n' "$HASH" > "$TMP/users.toml"
taskset -c 0 "$BIN" --bind 127.0.0.1:$PLAIN --grpc-port 0 --cores 1 --log-level warn &
P1=$!
taskset -c 0 "$BIN" --bind 127.0.0.1:$AUTH --grpc-port 0 --cores 1 --log-level warn \
    --auth --auth-secret "$SECRET" --auth-users "$TMP/users.toml" &
P2=$!
trap 'kill $P1 $P2 2>/dev/null; wait $P1 $P2 2>/dev/null; rm -rf "$TMP"' EXIT
for p in $PLAIN $AUTH; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$p/nacos/v1/console/health/liveness" >/dev/null && break; sleep 0.1; done
done
TOKEN=$(curl -sf -X POST "http://127.0.0.1:$AUTH/nacos/v1/auth/login" -d 'username=bench&password=bench-pw' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["accessToken"])')
export TOKEN
python3 bench/seed.py 127.0.0.1:$PLAIN
python3 bench/seed.py 127.0.0.1:$AUTH "$TOKEN"
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
# run LABEL PID LUA PORT: one row.
run() {
  local before after out reqs rps p99 us errs
  before=$(cpu_ticks "$2")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "bench/wrk/$3.lua" "http://127.0.0.1:$4" 2>&1)
  after=$(cpu_ticks "$2")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  errs=$(echo "$out" | grep -E "Non-2xx|Socket errors" | tr -s ' ' || true)
  us=$(awk -v b="$before" -v a="$after" -v t="$TCK" -v n="$reqs" 'BEGIN {printf "%.2f", (a - b) / t * 1e6 / n}')
  echo "| $1 | $reqs | $rps | $p99 | $us us |${errs:+ $errs}"
}
echo "| beat | requests | req/s | p99 | server CPU per beat |"
echo "|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  run "no auth (round $r)" $P1 beat $PLAIN
  run "--auth, Bearer token (round $r)" $P2 beat_token $AUTH
done
# The token cache did the work: one HMAC check per shard, then hits.
curl -sf "http://127.0.0.1:$AUTH/metrics?accessToken=$TOKEN" | grep '^registry_auth_cache_total{kind="token"'
