#!/usr/bin/env bash
# Protocol rows for the bench (issue 15): roster on h2c (h2load, prior
# knowledge), TLS HTTP/1.1 (wrk) and TLS HTTP/2 (h2load, ALPN h2), with the
# plaintext HTTP/1.1 row (wrk) beside them for scale, against one backend of
# the bench farm. roster only: the nginx/HAProxy rows with the same
# certificates are still to write (see README "Protocols").
#
# Loopback only; every process it starts is stopped by PID on exit; each
# load run is bounded by BENCH_DURATION. Prints a markdown table on stdout.
# Knobs: BENCH_DURATION=10 (s per run)  BENCH_CONNECTIONS=64  BENCH_STREAMS=10
#   (h2 streams per connection)  BENCH_THREADS=1 (proxy threads)
#   BENCH_PORT_BASE=28000  BENCH_SKIP_BUILD=1  BENCH_ROSTER=/path/to/roster
#   BENCH_PROFILE=debug (only to develop this script: numbers are meaningless)
# Needs wrk, h2load (Debian: nghttp2-client) and openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNECTIONS:-64}
STREAMS=${BENCH_STREAMS:-10}
THREADS=${BENCH_THREADS:-1}
BASE=${BENCH_PORT_BASE:-28000}
for v in $(env | grep -o '^ROSTER_[A-Z_]*' || true); do unset "$v"; done

for t in wrk h2load openssl; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install wrk nghttp2-client openssl)" >&2; exit 1; }
done
PROFILE=${BENCH_PROFILE:-release}
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  flag=(); [ "$PROFILE" = release ] && flag=(--release)
  # Two builds, as in bench/run.sh: the example's dev-dependencies change
  # features of shared crates, and roster must be the plain build.
  flock /tmp/roster-build.lock nice -n 10 cargo build "${flag[@]}" --quiet --example benchfarm
  flock /tmp/roster-build.lock nice -n 10 cargo build "${flag[@]}" --quiet --bin roster
fi
ROSTER=${BENCH_ROSTER:-$ROOT/target/$PROFILE/roster}
FARM=$ROOT/target/$PROFILE/examples/benchfarm
for b in "$ROSTER" "$FARM"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done

W=$(mktemp -d /tmp/roster-proto-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
wait_port() {
  local i
  for i in $(seq 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  exit 1
}

P_APP=$((BASE + 1)) P_VITALS=$((BASE + 2)) P_FARMCTL=$((BASE + 3))
P_LB=$((BASE + 10)) P_CTL=$((BASE + 11)) P_TLS=$((BASE + 12))

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$W/tls.key" -out "$W/tls.crt" 2>/dev/null

"$FARM" serve --app "127.0.0.1:$P_APP" --vitals-port "$P_VITALS" \
  --control "127.0.0.1:$P_FARMCTL" >"$W/farm.log" 2>&1 &
PIDS+=("$!")
wait_port "$P_FARMCTL"
RUST_LOG=warn "$ROSTER" lb --listen "127.0.0.1:$P_LB" --control-listen "127.0.0.1:$P_CTL" \
  --tls-listen "127.0.0.1:$P_TLS" --tls-cert "$W/tls.crt:$W/tls.key" \
  --threads "$THREADS" --allowed-networks 127.0.0.0/8 --warmup 0s >"$W/lb.log" 2>&1 &
PIDS+=("$!")
wait_port "$P_CTL"
timeout 60 "$FARM" register --lb "127.0.0.1:$P_CTL" --address "127.0.0.1:$P_APP" \
  --metrics-port "$P_VITALS" >/dev/null
timeout 60 "$FARM" wait-routable --lb "127.0.0.1:$P_CTL" --count 1 --timeout 30s >/dev/null

# Requests/s, and the answers that were not 2xx (or failed) beside it:
# h2load's "finished in Xs, N req/s" and "status codes: N 2xx"; wrk's
# "Requests/sec:" and "Non-2xx or 3xx responses:" / socket errors.
h2rate() { timeout $((DURATION + 30)) h2load -D "$DURATION" -c "$CONNS" -m "$STREAMS" -t 1 "$@" 2>&1 |
  awk '/^finished in/ {gsub(",", "", $4); r=$4} /^requests:/ {n=$2; ok=0}
       /^status codes:/ {ok=$3} END {printf "%s | %d", r, n - ok}'; }
wrkrate() { timeout $((DURATION + 30)) wrk -t 1 -c "$CONNS" -d "${DURATION}s" "$@" 2>&1 |
  awk '/^Requests\/sec/ {r=$2} /Non-2xx/ {bad+=$NF} /Socket errors/ {gsub(/[^0-9 ]/, ""); for (i = 1; i <= NF; i++) bad += $i}
       END {printf "%s | %d", r, bad}'; }

echo "| roster, 1 backend, $CONNS connections | requests/s | not 2xx / failed |"
echo "| --- | --- | --- |"
echo "| HTTP/1.1 plaintext (wrk) | $(wrkrate "http://127.0.0.1:$P_LB/") |"
echo "| h2c prior knowledge, $STREAMS streams/conn (h2load) | $(h2rate "http://127.0.0.1:$P_LB/") |"
echo "| TLS HTTP/1.1 (wrk) | $(wrkrate "https://127.0.0.1:$P_TLS/") |"
echo "| TLS HTTP/2, $STREAMS streams/conn (h2load) | $(h2rate "https://127.0.0.1:$P_TLS/") |"
