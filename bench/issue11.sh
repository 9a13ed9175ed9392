#!/usr/bin/env bash
# Issue 11's targets in one sitting, on a quiet machine (nothing else of
# yours running, no build beside it). Writes everything to one log:
#
#   bench/issue11.sh [ROUNDS] > bench/results/tmp/issue11.log
#
# 1. server CPU per request at 1 and 2 shards, ROUNDS rounds interleaved
#    (`WRK_CPUS=1 bench/cpu_per_request.sh CORES 10 64`);
# 2. the 200,000-instance beat scenario at `--cores 1` and at the default
#    cores, generator on CPU 1 (one run each per round);
# 3. `bench/compare.sh beat|burst|query` against r-nacos 0.8.8 at the
#    default cores (both servers on CPUs 0-1, generator on CPU 1);
# 4. the 1,000,000-instance register burst at both core counts, and
#    bench/memory.sh at the default.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
BIN=target/release/distro-registry
LG=target/release/distro-loadgen
PORT=18848
cargo build --release --quiet -p distro-registry -p distro-loadgen
if ss -ltn | grep -q ":$PORT "; then
  echo "port $PORT is taken: a leftover node?" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# One node on $PORT with `--cores CORES` ("" = default), the generator on
# CPU 1 with the given flags; prints the generator's table.
lg_run() {
  local cores=$1; shift
  local args=(--bind "127.0.0.1:$PORT" --data-dir none --log-level warn)
  [ -n "$cores" ] && args+=(--cores "$cores")
  "$BIN" "${args[@]}" >"$tmp/node.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/nacos/v1/console/health/liveness" >/dev/null && break
    sleep 0.1
  done
  taskset -c 1 "$LG" --target "http://127.0.0.1:$PORT" --label "cores=${cores:-default}" \
    --server-pid "$pid" --threads 1 --out "$tmp/lg" "$@" 2>/dev/null | grep -v '^\[' || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "# issue 11 in one sitting, $(date -u +%FT%TZ), $(git rev-parse --short HEAD)"
for r in $(seq "$ROUNDS"); do
  for cores in 1 2; do
    echo "## cpu_per_request, round $r, $cores shard(s)"
    WRK_CPUS=1 ONLY="liveness beat list detail register" bench/cpu_per_request.sh "$cores" 10 64
  done
done
for r in $(seq "$ROUNDS"); do
  for cores in 1 ""; do
    echo "## beat 200k, round $r, cores ${cores:-default}"
    lg_run "$cores" --connections 128 --scenario beat --instances 200000 --services 2000 --duration 30
  done
done
for s in beat burst query; do
  echo "## compare.sh $s at the default cores"
  CORES=2 SERVER_CPUS=0,1 LOADGEN_CPUS=1 bench/compare.sh "$s" >/dev/null
  cat "bench/results/$s.md"
done
for cores in 1 ""; do
  echo "## burst 1M, cores ${cores:-default}"
  lg_run "$cores" --connections 128 --scenario burst --instances 1000000 --services 10000
done
echo "## memory"
bench/memory.sh 1000000 10000 "" 0
