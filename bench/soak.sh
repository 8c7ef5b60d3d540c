#!/usr/bin/env bash
# `make soak`: SOAK_MINUTES (default 30) of mixed load through ONE release
# `roster lb` on loopback: steady HTTP/1.1 and h2c traffic, registration
# churn, backends failing and recovering (500s, resets, dead vitals,
# ready:false), config reloads and a hang-up storm every minute. The LB's
# RSS, fds, threads and /telemetry series are sampled every minute; PASS when
# each is flat after warm-up and no request failed outside the injected
# faults (the rule: bench/soak.py's docstring and docs/soak.md).
#
# The driver is bench/soak.py (python-h2 in .venv for h2c); the backends are
# examples/benchfarm.rs (`serve --vitals-on-apps`, faults via POST /fault).
# Every process started here is stopped by PID on exit; every loop is bounded
# in count and time. Knobs (environment):
#   SOAK_MINUTES=30  SOAK_H1_RATE=150  SOAK_H2_RATE=100 (req/s)  SOAK_STORM=150
#   SOAK_PORT_BASE=31000  SOAK_OUT=DIR (default: a new /tmp/roster-soak.* kept)
#   SOAK_ROSTER=/path/to/roster (default target/release/roster)
#   SOAK_SKIP_BUILD=1 (use the binaries as built)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MINUTES=${SOAK_MINUTES:-30}
BASE=${SOAK_PORT_BASE:-31000}
OUT=${SOAK_OUT:-$(mktemp -d /tmp/roster-soak.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
case "$MINUTES" in '' | *[!0-9]* | 0) echo "SOAK_MINUTES must be a whole number >= 1" >&2; exit 2 ;; esac

STARTED=$(date +%s)
log() { printf '[soak %4ds] %s\n' "$(($(date +%s) - STARTED))" "$*" >&2; }

# Configuration comes from the flags and the file below only.
for v in $(env | grep -o '^ROSTER_[A-Z_]*' || true); do unset "$v"; done
export RUST_LOG=${RUST_LOG:-info}

# ---------------------------------------------------------------- what it needs
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import h2' 2>/dev/null; then
  log "installing python-h2 into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q -r bench/requirements-soak.txt
fi
if [ -z "${SOAK_SKIP_BUILD:-}" ]; then
  scripts/setup.sh
  log "building (release): roster and the benchfarm example"
  # One heavy build at a time on a shared machine.
  flock /tmp/roster-build.lock cargo build --release --quiet --example benchfarm
  flock /tmp/roster-build.lock cargo build --release --quiet --bin roster
fi
ROSTER=${SOAK_ROSTER:-$ROOT/target/release/roster}
FARM=$ROOT/target/release/examples/benchfarm
for b in "$ROSTER" "$FARM"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done
# A private copy: a rebuild during a long run cannot swap the binary measured.
cp "$ROSTER" "$OUT/roster"
ROSTER=$OUT/roster

# Ports (127.0.0.1 and the farm's 127.10.x.y): LB proxy BASE, control BASE+1,
# farm control BASE+2, apps BASE+10 and their vitals BASE+11.
P_PROXY=$BASE; P_CTL=$((BASE + 1)); P_FARMCTL=$((BASE + 2)); P_APP=$((BASE + 10))
for p in $P_PROXY $P_CTL $P_FARMCTL $P_APP $((P_APP + 1)); do
  if [ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then
    echo "port $p is in use; set SOAK_PORT_BASE" >&2
    exit 1
  fi
done

PIDS=()
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  log "results and logs: $OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/common.sh
. bench/common.sh

# ---------------------------------------------------------------- the farm
# Backend i listens on 127.10.0.(i+1):P_APP, its vitals on the same IP at
# P_APP+1: core 0-5, web 6-8, ephemeral 9-38, spares 39-41 (soak.py's CORE,
# WEB, CHURN_POOL, SPARE).
apps=()
for i in $(seq 0 41); do apps+=(--app "127.10.0.$((i + 1)):$P_APP"); done
"$FARM" serve "${apps[@]}" --vitals-port "$((P_APP + 1))" --vitals-on-apps \
  --control "127.0.0.1:$P_FARMCTL" >"$OUT/farm.log" 2>&1 &
FARM_PID=$!
PIDS+=("$FARM_PID")
listening "$P_FARMCTL" "$FARM_PID" || { echo "the farm did not start:" >&2; tail -5 "$OUT/farm.log" >&2; exit 1; }

# ---------------------------------------------------------------- the LB
# Short ejections (5 s, 10 s at most): with the default doubling up to 300 s
# a backend faulted every few minutes would stay ejected, and after a few
# minutes the faults would no longer reach the traffic at all.
CONFIG=$OUT/roster.yaml
printf 'routes:\n  - {name: web, host: web.soak, service: web}\n' >"$CONFIG"
"$ROSTER" lb --config "$CONFIG" --listen "127.0.0.1:$P_PROXY" --control-listen "127.0.0.1:$P_CTL" \
  --threads 2 --allowed-networks 127.0.0.0/8 --health-interval 1s --health-timeout 500ms \
  --lease-ttl 30s --warmup 0s --grace-period 5s --ejection-time 5s --max-ejection-time 10s \
  >"$OUT/lb.log" 2>&1 &
LB_PID=$!
PIDS+=("$LB_PID")
if ! listening "$P_CTL" "$LB_PID" || ! listening "$P_PROXY" "$LB_PID"; then
  echo "the LB did not start:" >&2
  tail -5 "$OUT/lb.log" >&2
  exit 1
fi
log "LB pid $LB_PID ($("$ROSTER" --version 2>/dev/null || echo roster), HEAD $(git rev-parse --short HEAD), sha256 $(sha256sum "$ROSTER" | cut -c1-12)); $MINUTES min; out: $OUT"

# ---------------------------------------------------------------- the soak
rc=0
timeout $((MINUTES * 60 + 300)) .venv/bin/python bench/soak.py \
  --proxy "$P_PROXY" --control "$P_CTL" --farm "$P_FARMCTL" --app "$P_APP" \
  --lb-pid "$LB_PID" --lb-log "$OUT/lb.log" --config "$CONFIG" --out "$OUT" --minutes "$MINUTES" \
  --h1-rate "${SOAK_H1_RATE:-150}" --h2-rate "${SOAK_H2_RATE:-100}" --storm "${SOAK_STORM:-150}" || rc=$?

if ! kill -0 "$LB_PID" 2>/dev/null; then
  log "the LB is gone"
  rc=1
fi
log "$([ "$rc" -eq 0 ] && echo PASS || echo "FAIL (rc=$rc)"); report: $OUT/report.md"
exit "$rc"
