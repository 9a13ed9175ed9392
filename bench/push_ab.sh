#!/usr/bin/env bash
# Push fan-out to 1,000 gRPC subscribers of one service, 50 changes, with
# two generator binaries side by side (rounds interleaved), at the
# default push delay (200 ms) and at 10 ms. The server on CPU 0 (one
# shard), the generator on CPU 1.
#
#   bench/push_ab.sh OLD_LOADGEN [NEW_LOADGEN]
#
# (docs/performance.md: the generator that parsed pushes into Value vs
# the one that skips the hosts.) Prints each run's push and push_all rows.
set -u
cd "$(dirname "$0")/.."
OLD=${1:?give the first generator binary}
NEW=${2:-target/release/distro-loadgen}
cargo build --release --quiet -p distro-registry -p distro-loadgen --bins
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
run() { # $1 loadgen binary, $2 delay, $3 label
  taskset -c 0 target/release/distro-registry --bind 127.0.0.1:18848 --cores 1 --log-level warn \
    --data-dir none --push-delay-ms $2 --subscribers-per-service-max 2000 &
  local pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18848/ && break; sleep 0.1; done
  # Not another node's figures: this node must be the one listening.
  kill -0 $pid 2>/dev/null || { echo "the node did not start (port 18848 taken?)" >&2; exit 1; }
  taskset -c 1 $1 --threads 1 --max-error-ratio 1 --protocol grpc --scenario push --instances 50 \
    --connections 1000 --target http://127.0.0.1:18848 --label $3 --server-pid $pid --out /tmp/push-$3 \
    | grep -E "^$3 +push" | head -4
  kill $pid; wait $pid 2>/dev/null
}
for round in 1 2; do
  for d in 200 10; do
    run "$OLD" $d old-d$d-r$round
    run "$NEW" $d new-d$d-r$round
  done
done
