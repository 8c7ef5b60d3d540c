#!/usr/bin/env bash
# Instructions per request on the proxy thread alone, at a pool of N
# backends (round robin): `valgrind --tool=callgrind --separate-threads=yes`,
# counters zeroed after a warm-up that opens a connection to every backend,
# dumped after 3,000 sequential requests on one keep-alive connection. Checks
# are set to 1 h so only requests fall in the window. Run it for 10 and for
# 10,000 and compare the `proxy` thread (the dump with the most instructions):
#
#   bench/pool-instructions.sh 10; bench/pool-instructions.sh 10000
#
# Needs `cargo build --release --bin roster --example benchfarm`. Loopback
# only; proxy pinned to cpu 0, farm and client to cpu 1; every process it
# starts is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?number of backends}
COUNT=${BENCH_POOL_COUNT:-3000}
W=${BENCH_POOL_DIR:-/tmp/roster-pool-$N}
rm -rf "$W"; mkdir -p "$W"
R=target/release; FARM=$R/examples/benchfarm
P=28200; CTL=28201; PG=28300; PV=28390; PFC=28399
PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
taskset -c 1 "$FARM" --threads 1 serve --app "0.0.0.0:$PG" --vitals-port "$PV" \
  --control "127.0.0.1:$PFC" >"$W/farm.log" 2>&1 &
PIDS+=("$!")
taskset -c 0 valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$W/out.cg" \
  "$R/roster" lb --listen "127.0.0.1:$P" --control-listen "127.0.0.1:$CTL" --threads 1 \
  --allowed-networks 127.0.0.0/8 --rate-limit 0 --lease-ttl 1h --health-interval 1h \
  --max-backends 10000 >"$W/lb.log" 2>&1 &
LP=$!
PIDS+=("$LP")
for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$CTL") 2>/dev/null && break; sleep 0.2; done
taskset -c 1 timeout 300 "$FARM" register --lb "127.0.0.1:$CTL" --count "$N" --app-port "$PG" \
  --metrics-port "$PV" --concurrency 16 >"$W/register.json"
taskset -c 1 timeout 300 "$FARM" wait-routable --lb "127.0.0.1:$CTL" --count "$N" --timeout 280s >/dev/null
taskset -c 1 timeout 600 python3 bench/fixedclient.py --target "127.0.0.1:$P" --count $((N + 500)) >"$W/warm.log"
callgrind_control -z "$LP" >/dev/null
taskset -c 1 timeout 600 python3 bench/fixedclient.py --target "127.0.0.1:$P" --count "$COUNT" >"$W/client.log"
callgrind_control -d "$LP" >/dev/null
kill -INT "$LP" 2>/dev/null || true
best=0
for f in "$W"/out.cg.1-*; do
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
  [ "${ir:-0}" -gt "$best" ] && best=$ir
done
echo "$N backends: $((best / COUNT)) instructions per request on the proxy thread ($COUNT requests)"
