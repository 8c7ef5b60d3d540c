#!/usr/bin/env bash
# Part 7 of `make bench`: load-aware selection where it matters. Two LB
# replicas share four backends, one of them degraded; every backend serves
# --workers requests at once and queues the rest. Two scenarios:
#   slow   the degraded backend takes BENCH_LA_SLOW_FACTOR (10) times as long
#   busy   it is as fast, but clients no LB here sees keep
#          BENCH_LA_EXTERNAL (3 x workers) requests queued on it An open-loop client (examples/loadaware.rs)
# sends a fixed rate, alternating between the two replicas, and measures
# latency from each request's due time, so queueing shows.
#
#   roster-ll   2x `roster lb --algorithm least_loaded` (vitals every 1 s)
#   roster-rr   2x `roster lb --algorithm round_robin`
#   nginx       2x nginx, `least_conn`
#   haproxy     2x HAProxy, `balance leastconn`
#
#   bench/loadaware.sh WORKDIR        (bench/run.sh calls it as part 7)
#
# Environment (bench/run.sh sets them): ROSTER LOADAWARE FARM PROXY_CPUS
# LOAD_CPUS BASE; BENCH_LA_RATE=1600 (req/s over both replicas)
# BENCH_LA_SECONDS=20 BENCH_LA_WARMUP=3 BENCH_LA_SERVICE_MS=2
# BENCH_LA_SLOW_FACTOR=10 BENCH_LA_WORKERS=8 BENCH_LA_ROUNDS=1
# BENCH_LA_EXTERNAL=24 BENCH_LA_SCENARIOS="slow busy"
# BENCH_LA_TARGETS="roster-ll roster-rr nginx haproxy".
# Results: WORKDIR/p7-SCENARIO-TARGET-ROUND.json; facts p7.*.
set -euo pipefail
cd "$(dirname "$0")/.."
W=$1
RATE=${BENCH_LA_RATE:-1600}
SECONDS_=${BENCH_LA_SECONDS:-20}
WARMUP=${BENCH_LA_WARMUP:-3}
SERVICE=${BENCH_LA_SERVICE_MS:-2}
FACTOR=${BENCH_LA_SLOW_FACTOR:-10}
WORKERS=${BENCH_LA_WORKERS:-8}
ROUNDS=${BENCH_LA_ROUNDS:-1}
TARGETS=${BENCH_LA_TARGETS:-roster-ll roster-rr nginx haproxy}
SCENARIOS=${BENCH_LA_SCENARIOS:-slow busy}
EXTERNAL=${BENCH_LA_EXTERNAL:-$((3 * WORKERS))}
BASE=${BASE:-27000}
P_APP=$((BASE + 900)); P_V=$((BASE + 990)); P_A=$((BASE + 910)); P_B=$((BASE + 920))
FACTS=$W/facts.tsv
fact() { printf '%s\t%s\n' "$1" "$2" >>"$FACTS"; }
log() { printf '[bench p7] %s\n' "$*" >&2; }

PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# shellcheck source=bench/common.sh
. bench/common.sh
stop() { # PID [SIGNAL]: INT stops roster and nginx at once; HAProxy wants TERM
  local i
  kill "-${2:-INT}" "$1" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

BACKENDS=(127.0.1.1 127.0.1.2 127.0.1.3 127.0.1.4)
SLOW=${BACKENDS[3]}
# backends SCENARIO: start the four; sets BPID.
backends() {
  local args=() factor=$FACTOR external=0 i
  [ "$1" = busy ] && { factor=1; external=$EXTERNAL; }
  for ip in "${BACKENDS[@]}"; do args+=(--backend "$ip:$P_APP"); done
  taskset -c "$LOAD_CPUS" "$LOADAWARE" backends "${args[@]}" --vitals-port "$P_V" \
    --workers "$WORKERS" --service-ms "$SERVICE" --slow "$SLOW:$P_APP" --slow-factor "$factor" \
    --external "$external" >"$W/p7-backends-$1.log" 2>&1 &
  BPID=$!
  PIDS+=("$BPID")
  for i in $(seq 50); do (exec 3<>"/dev/tcp/$SLOW/$P_APP") 2>/dev/null && break; sleep 0.1; done
}

fact p7.rate "$RATE"; fact p7.seconds "$SECONDS_"; fact p7.service_ms "$SERVICE"
fact p7.slow_factor "$FACTOR"; fact p7.workers "$WORKERS"; fact p7.rounds "$ROUNDS"
fact p7.external "$EXTERNAL"; fact p7.scenarios "$SCENARIOS"

# Two replicas of TARGET on P_A and P_B; sets REPLICAS to their PIDs.
start_pair() {
  local t=$1 port i
  REPLICAS=()
  for port in $P_A $P_B; do
    case $t in
      roster-ll | roster-rr)
        local algo=least_loaded; [ "$t" = roster-rr ] && algo=round_robin
        taskset -c "$PROXY_CPUS" "$ROSTER" lb --listen "127.0.0.1:$port" \
          --control-listen "127.0.0.1:$((port + 1))" --threads 1 --allowed-networks 127.0.0.0/8 \
          --rate-limit 0 --lease-ttl 1h --health-interval 1s --algorithm "$algo" \
          ${BENCH_LB_FLAGS:-} >"$W/p7-$t-$port.log" 2>&1 &
        ;;
      nginx)
        mkdir -p "$W/ngx-$port"
        local ups=""
        for ip in "${BACKENDS[@]}"; do ups+="        server $ip:$P_APP;"$'\n'; done
        sed -e "s|@THREADS@|1|; s|@DIR@|$W/ngx-$port|g; s|@LISTEN@|127.0.0.1:$port|" bench/nginx.conf.in |
          awk -v u="        least_conn;"$'\n'"${ups%$'\n'}" '{ if ($0 == "@UPSTREAMS@") print u; else print }' \
            >"$W/ngx-$port/nginx.conf"
        taskset -c "$PROXY_CPUS" nginx -p "$W/ngx-$port" -c "$W/ngx-$port/nginx.conf" \
          -g 'daemon off;' >"$W/p7-$t-$port.log" 2>&1 &
        ;;
      haproxy)
        local srv="" n=0
        for ip in "${BACKENDS[@]}"; do
          srv+="    server b$n $ip:$P_APP check port $P_V inter 1s"$'\n'; n=$((n + 1))
        done
        sed -e "s|@THREADS@|1|; s|@LISTEN@|127.0.0.1:$port|; s|balance roundrobin|balance leastconn|" \
          bench/haproxy.cfg.in | awk -v s="${srv%$'\n'}" '{ if ($0 == "@SERVERS@") print s; else print }' \
          >"$W/p7-haproxy-$port.cfg"
        taskset -c "$PROXY_CPUS" haproxy -db -f "$W/p7-haproxy-$port.cfg" >"$W/p7-$t-$port.log" 2>&1 &
        ;;
    esac
    REPLICAS+=("$!")
    PIDS+=("$!")
    listening "$port" "$!" || { log "$t on $port did not start (p7-$t-$port.log)"; return 1; }
  done
  if [[ $t == roster* ]]; then
    local bargs=()
    for ip in "${BACKENDS[@]}"; do bargs+=(--address "$ip:$P_APP"); done
    for port in $P_A $P_B; do
      timeout 60 "$FARM" register --lb "127.0.0.1:$((port + 1))" --metrics-port "$P_V" "${bargs[@]}" >/dev/null
      timeout 60 "$FARM" wait-routable --lb "127.0.0.1:$((port + 1))" --count 4 --timeout 30s >/dev/null
    done
  fi
}

for sc in $SCENARIOS; do
backends "$sc"
for r in $(seq "$ROUNDS"); do
  for t in $TARGETS; do
    if ! start_pair "$t"; then
      fact "p7.$sc.$t.status" "did not start"
      for p in "${REPLICAS[@]}"; do stop "$p"; done
      continue
    fi
    timeout $((WARMUP + SECONDS_ + 60)) taskset -c "$LOAD_CPUS" "$LOADAWARE" load \
      --target "127.0.0.1:$P_A" --target "127.0.0.1:$P_B" --rate "$RATE" \
      --seconds "$SECONDS_" --warmup "$WARMUP" >"$W/p7-$sc-$t-$r.json" 2>>"$W/p7-load.log" ||
      log "$sc $t round $r: the client failed (p7-load.log)"
    log "$sc $t round $r: $(cat "$W/p7-$sc-$t-$r.json" 2>/dev/null)"
    fact "p7.$sc.$t.status" ran
    if [[ $t == roster* ]]; then
      # The degraded backend's share of the answers, from both replicas.
      share=$(for port in $P_A $P_B; do curl -s --max-time 5 "http://127.0.0.1:$((port + 1))/telemetry"; done |
        awk -v slow="$SLOW:" '/^roster_lb_requests_total\{/ { n += $NF; if (index($0, "backend=\"" slow)) s += $NF }
          END { if (n > 0) printf "%.4f", s / n; else print "n/a" }')
      fact "p7.$sc.$t.slow_share" "$share"
      log "$sc $t round $r: the degraded backend answered $share of the requests"
    fi
    sig=INT; [ "$t" = haproxy ] && sig=TERM
    for p in "${REPLICAS[@]}"; do stop "$p" "$sig"; done
    sleep 2 # the degraded backend's queue drains before the next target
  done
done
kill -TERM "$BPID" 2>/dev/null || true
wait "$BPID" 2>/dev/null || true
done
