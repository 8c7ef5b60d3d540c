#!/usr/bin/env bash
# `make bench`: roster against nginx and HAProxy, the pool at 10,000 backends,
# the registry at scale and the agent's footprint, written to BENCHMARKS.md.
#
#   1. proxy throughput/latency: roster, nginx, HAProxy and direct, same
#      backends, same thread count, wrk in alternating rounds, medians
#   3. registry at scale: 10,000 backends checked every 5s: CPU, RSS,
#      registration time, time until all routable, detection of 100 not-ready
#   2. selection vs pool size: traffic through that LB vs one with 10 backends
#   4. agent footprint: idle RSS and CPU of one `roster agent`
#   8. services: BACKENDS backends across 1,000 services with host routes
#      vs one service of 10 backends, req/s in alternating rounds
#   5. hostile clients, per listener (LB proxy, LB control API, agent vitals,
#      injector): idle + slowloris connections and a normal poller at once,
#      the server with its default limits
#   6. instructions per request under callgrind: roster, bare pingora
#      (examples/bare_pingora.rs), nginx, HAProxy; body sizes 3 B to 1 MB
#      (bench/instructions.sh)
#   7. load-aware selection: two LB replicas, four backends, one degraded,
#      open-loop load (bench/loadaware.sh, examples/loadaware.rs)
#   9. protocols: h2c (h2load), TLS HTTP/1.1 (wrk) and TLS HTTP/2 (h2load)
#      through roster, nginx and HAProxy, same certificate and backends,
#      placed as part 1 (bench/protocols.sh; needs nghttp2-client)
#
# Loopback only; every process it starts is stopped by PID on exit; every
# load loop is bounded in count and time. Knobs (environment):
#   BENCH_DURATION=10 (s per wrk run)  BENCH_ROUNDS=5  BENCH_CONNECTIONS=64
#   BENCH_THREADS=1 (proxy threads/workers)  BENCH_BACKENDS=10000
#   BENCH_CPU_SECONDS=30  BENCH_AGENT_SECONDS=60  BENCH_PORT_BASE=27000
#   BENCH_OUT=BENCHMARKS.md  BENCH_KEEP=1 (keep the work dir with all logs)
#   BENCH_ABUSE_SECONDS=30 (part 5 window per listener)  BENCH_ABUSE_IDLE=2000
#   BENCH_ABUSE_SLOW=300 (part 5 idle / slowloris connections)
#   BENCH_SKIP_BUILD=1  BENCH_PARTS="1 2 3 4 5 6 7 8 9"  BENCH_WORKDIR=DIR  BENCH_SERVICES=1000 (part 8)
#   BENCH_STREAMS=10 (part 9: h2 streams per connection)
#   part 6: BENCH_CG_COUNT BENCH_CG_WARM BENCH_CG_SIZES BENCH_CG_TARGETS BENCH_CG_H2C=1
#   part 7: BENCH_LA_RATE BENCH_LA_SECONDS BENCH_LA_ROUNDS ... (see the scripts)
#   BENCH_PROFILE=debug (only to develop this script: numbers are meaningless)
#   BENCH_ROSTER=/path/to/roster (A/B a candidate build against the peers)
#   BENCH_LB_FLAGS="--keepalive-pool-size 4096" (extra flags for every roster LB)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-5}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-1}
BACKENDS=${BENCH_BACKENDS:-10000}
CPU_SECONDS=${BENCH_CPU_SECONDS:-30}
AGENT_SECONDS=${BENCH_AGENT_SECONDS:-60}
BASE=${BENCH_PORT_BASE:-27000}
OUT=${BENCH_OUT:-BENCHMARKS.md}
ABUSE_SECONDS=${BENCH_ABUSE_SECONDS:-30}
ABUSE_IDLE=${BENCH_ABUSE_IDLE:-2000}
ABUSE_SLOW=${BENCH_ABUSE_SLOW:-300}
PARTS=${BENCH_PARTS:-1 2 3 4 5 6 7 8 9}

# Configuration comes from the flags below only.
for v in $(env | grep -o '^ROSTER_[A-Z_]*' || true); do unset "$v"; done
export RUST_LOG=${RUST_LOG:-info}

STARTED=$(date +%s)
log() { printf '[bench %4ds] %s\n' "$(($(date +%s) - STARTED))" "$*" >&2; }

# ---------------------------------------------------------------- setup
log "installing nginx, haproxy, wrk (idempotent)"
scripts/setup.sh bench
PROFILE=${BENCH_PROFILE:-release}
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  log "building ($PROFILE): roster and the benchfarm example"
  # Two builds on purpose: the example's dev-dependencies change features of
  # shared crates, and the roster measured must be the one `cargo build
  # --release` makes. Both variants stay cached in target/.
  flag=(); [ "$PROFILE" = release ] && flag=(--release)
  cargo build "${flag[@]}" --quiet --example benchfarm --example bare_pingora --example loadaware
  cargo build "${flag[@]}" --quiet --bin roster --bin roster-agent
fi
ROSTER=${BENCH_ROSTER:-$ROOT/target/$PROFILE/roster}
# The sidecar binary (what the injector runs), beside the roster measured.
AGENT_BIN=$(dirname "$ROSTER")/roster-agent
FARM=$ROOT/target/$PROFILE/examples/benchfarm
# The reference: pingora with nothing on top (same Cargo.lock, allocator and
# ServerConf as `roster lb`).
BARE=${BENCH_BARE:-$ROOT/target/$PROFILE/examples/bare_pingora}
LOADAWARE=$ROOT/target/$PROFILE/examples/loadaware
for b in "$ROSTER" "$FARM" "$BARE" "$LOADAWARE"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done

# BENCH_WORKDIR: reuse a run's directory (e.g. BENCH_PARTS=1 to redo part 1
# into a full run's results; the report is rebuilt from all of it).
W=${BENCH_WORKDIR:-$(mktemp -d /tmp/roster-bench.XXXXXX)}
mkdir -p "$W"
chmod 755 "$W"
# Ports (all on loopback): farm 1-4 (part 1 apps), 90 vitals, 99 control,
# 100 (generated apps on 0.0.0.0); LBs from 200 up; part 5 from 600 up.
P_APP=$((BASE + 1)); P_VITALS=$((BASE + 90)); P_FARMCTL=$((BASE + 99)); P_GEN=$((BASE + 100))
P_ROSTER=$((BASE + 200)); P_NGINX=$((BASE + 210)); P_HAPROXY=$((BASE + 220)); P_BARE=$((BASE + 230))
P_R10=$((BASE + 300)); P_R3=$((BASE + 400)); P_R4=$((BASE + 500))
P_B10=$((BASE + 240)); P_B10K=$((BASE + 250))
P_AGENT=$((BASE + 590)); P_R8=$((BASE + 700)); P_R8ONE=$((BASE + 710))
P_R5=$((BASE + 600)); P_R5C=$((BASE + 610)); P_V5=$((BASE + 620)); P_INJ=$((BASE + 630))
for p in $P_APP $((P_APP + 1)) $((P_APP + 2)) $((P_APP + 3)) $P_VITALS $P_FARMCTL $P_GEN \
  $P_ROSTER $((P_ROSTER + 1)) $P_NGINX $P_HAPROXY $P_BARE $P_R10 $((P_R10 + 1)) \
  $P_R3 $((P_R3 + 1)) $P_R4 $((P_R4 + 1)) $P_AGENT $((P_AGENT + 1)) \
  $P_R5 $((P_R5 + 1)) $P_R5C $((P_R5C + 1)) $P_V5 $P_INJ \
  $P_R8 $((P_R8 + 1)) $P_R8ONE $((P_R8ONE + 1)) $P_B10 $P_B10K; do
  if [ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then
    echo "port $p is in use; set BENCH_PORT_BASE" >&2
    exit 1
  fi
done

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "${BENCH_KEEP:-}${BENCH_WORKDIR:-}" ]; then log "work dir kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# CPU placement: proxies on the first THREADS cores, wrk, the farm and the
# clients on the rest (on 2 cores with THREADS=1: proxy on cpu 0, load on cpu 1).
NCPU=$(nproc)
if [ "$NCPU" -gt "$THREADS" ]; then
  PROXY_CPUS="0-$((THREADS - 1))"
  LOAD_CPUS="$THREADS-$((NCPU - 1))"
else
  PROXY_CPUS="0-$((NCPU - 1))"
  LOAD_CPUS=$PROXY_CPUS
fi
LOAD_THREADS=$(taskset -c "$LOAD_CPUS" nproc)

FACTS=$W/facts.tsv
# A reused directory keeps its facts; the report reads the last of each.
[ -n "${BENCH_WORKDIR:-}" ] || : >"$FACTS"
fact() { printf '%s\t%s\n' "$1" "$2" >>"$FACTS"; }
# What was measured, so a report rebuilt later (report.py W OUT) names it.
fact run.commit "$(git rev-parse --short HEAD)"
fact run.dirty "$(git status --porcelain -- src Cargo.toml Cargo.lock | head -c 1)"

# start NAME CPUS CMD... : run in the background, log to $W/NAME.log.
start() {
  local name=$1 cpus=$2
  shift 2
  taskset -c "$cpus" "$@" >"$W/$name.log" 2>&1 &
  PIDS+=("$!")
  LAST_PID=$!
}
# stop PID [SIGNAL]: signal, wait up to 5s, then KILL.
stop() {
  local pid=$1 sig=${2:-TERM} i
  kill "-$sig" "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
# shellcheck source=bench/common.sh
. bench/common.sh
wait_port() {
  local port=$1 name=$2
  listening "$port" && return 0
  echo "$name did not listen on $port; its log:" >&2
  tail -20 "$W/$name.log" >&2 || true
  exit 1
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
# cpu_window PID SECONDS PREFIX: % of one core over the window, RSS at its end.
cpu_window() {
  local pid=$1 secs=$2 prefix=$3 t0 c0 t1 c1
  t0=$(now); c0=$(ticks "$pid")
  sleep "$secs"
  t1=$(now); c1=$(ticks "$pid")
  fact "$prefix.cpu_percent" "$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.2f", (b - a) / hz / (e - s) * 100}')"
  fact "$prefix.seconds" "$(awk -v s="$t0" -v e="$t1" 'BEGIN {printf "%.1f", e - s}')"
  fact "$prefix.rss_kb" "$(kb "$pid" VmRSS)"
  fact "$prefix.hwm_kb" "$(kb "$pid" VmHWM)"
}
# telemetry_sum CTLPORT REGEX: sum of the series whose name{labels} match.
telemetry_sum() { curl -s --max-time 10 "http://127.0.0.1:$1/telemetry" | awk -v m="$2" '$1 ~ "^"m {s += $2} END {printf "%.6f", s}'; }
# wrk_run FILE URL: one bounded wrk run on the load cores.
wrk_run() {
  timeout $((DURATION + 30)) taskset -c "$LOAD_CPUS" \
    wrk -t"$LOAD_THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$2" >"$1" 2>&1 || true
}
# pin_control_plane PID: every thread of a roster LB but its proxy workers
# (named "proxy", "proxy-tls") moves to the load cores, so the proxy core runs requests
# only; the checks and publication run on the "BG control" runtime.
pin_control_plane() {
  local t
  for t in /proc/"$1"/task/*; do
    [[ "$(cat "$t/comm" 2>/dev/null)" == proxy* ]] && continue
    taskset -p -c "$LOAD_CPUS" "${t##*/}" >/dev/null 2>&1 || true
  done
}
roster_lb() { # NAME PORT EXTRA...: a roster LB on PORT (proxy) and PORT+1 (control)
  local name=$1 port=$2
  shift 2
  start "$name" "$PROXY_CPUS" "$ROSTER" lb --listen "127.0.0.1:$port" \
    --control-listen "127.0.0.1:$((port + 1))" --threads "$THREADS" \
    --allowed-networks 127.0.0.0/8 --rate-limit 0 ${BENCH_LB_FLAGS:-} "$@"
  wait_port "$((port + 1))" "$name"
  wait_port "$port" "$name"
}

fact load_start "$(cut -d' ' -f1-3 /proc/loadavg)"
fact proxy_cpus "$PROXY_CPUS"
fact load_cpus "$LOAD_CPUS"
fact threads "$THREADS"
fact duration "$DURATION"
fact rounds "$ROUNDS"
fact connections "$CONNS"
fact backends "$BACKENDS"

# ---------------------------------------------------------------- the farm
start farm "$LOAD_CPUS" "$FARM" --threads "$LOAD_THREADS" serve \
  --app "127.0.0.1:$P_APP" --app "127.0.0.1:$((P_APP + 1))" \
  --app "127.0.0.1:$((P_APP + 2))" --app "127.0.0.1:$((P_APP + 3))" \
  --app "0.0.0.0:$P_GEN" --vitals-port "$P_VITALS" --control "127.0.0.1:$P_FARMCTL"
FARM_PID=$LAST_PID
wait_port "$P_FARMCTL" farm
farm() { taskset -c "$LOAD_CPUS" timeout 300 "$FARM" "$@"; }

want() { [[ " $PARTS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- part 1
if want 1; then
  log "part 1: roster vs bare pingora vs nginx vs HAProxy vs direct (${ROUNDS} rounds x ${DURATION}s)"
  ups="" srv=""
  for i in 0 1 2 3; do
    ups+="        server 127.0.0.1:$((P_APP + i));"$'\n'
    srv+="    server b$i 127.0.0.1:$((P_APP + i)) check port $P_VITALS inter 5s"$'\n'
  done
  sed -e "s|@THREADS@|$THREADS|; s|@DIR@|$W|g; s|@LISTEN@|127.0.0.1:$P_NGINX|" bench/nginx.conf.in |
    awk -v u="${ups%$'\n'}" '{ if ($0 == "@UPSTREAMS@") print u; else print }' >"$W/nginx.conf"
  sed -e "s|@THREADS@|$THREADS|; s|@LISTEN@|127.0.0.1:$P_HAPROXY|" bench/haproxy.cfg.in |
    awk -v s="${srv%$'\n'}" '{ if ($0 == "@SERVERS@") print s; else print }' >"$W/haproxy.cfg"

  # The 4 backends register once: a 1h lease outlives the rounds (the
  # default 90s would expire them mid-run, nobody heartbeats here).
  roster_lb roster "$P_ROSTER" --lease-ttl 1h
  R1_PID=$LAST_PID
  farm register --lb "127.0.0.1:$((P_ROSTER + 1))" --metrics-port "$P_VITALS" \
    --address "127.0.0.1:$P_APP" --address "127.0.0.1:$((P_APP + 1))" \
    --address "127.0.0.1:$((P_APP + 2))" --address "127.0.0.1:$((P_APP + 3))" >"$W/p1-register.json"
  farm wait-routable --lb "127.0.0.1:$((P_ROSTER + 1))" --count 4 --timeout 30s >/dev/null
  start nginx "$PROXY_CPUS" nginx -p "$W" -c "$W/nginx.conf" -g 'daemon off;'
  NGINX_PID=$LAST_PID
  wait_port "$P_NGINX" nginx
  start haproxy "$PROXY_CPUS" haproxy -db -f "$W/haproxy.cfg"
  HAPROXY_PID=$LAST_PID
  wait_port "$P_HAPROXY" haproxy
  start bare "$PROXY_CPUS" "$BARE" --listen "127.0.0.1:$P_BARE" --threads "$THREADS" \
    --upstream "127.0.0.1:$P_APP" --upstream "127.0.0.1:$((P_APP + 1))" \
    --upstream "127.0.0.1:$((P_APP + 2))" --upstream "127.0.0.1:$((P_APP + 3))"
  BARE_PID=$LAST_PID
  wait_port "$P_BARE" bare

  declare -A URL=([roster]="http://127.0.0.1:$P_ROSTER/" [nginx]="http://127.0.0.1:$P_NGINX/"
    [haproxy]="http://127.0.0.1:$P_HAPROXY/" [direct]="http://127.0.0.1:$P_APP/"
    [bare]="http://127.0.0.1:$P_BARE/")
  for t in roster bare nginx haproxy direct; do # warm-up, not recorded
    DURATION=2 wrk_run "$W/warmup-$t.txt" "${URL[$t]}"
  done
  for r in $(seq "$ROUNDS"); do
    for t in roster bare nginx haproxy direct; do
      wrk_run "$W/wrk-p1-$t-$r.txt" "${URL[$t]}"
      log "  round $r $t: $(awk '/^Requests\/sec/ {print $2}' "$W/wrk-p1-$t-$r.txt") req/s"
    done
  done
  # Co-run: roster and bare under load at the same moment, sharing the
  # proxy core. The scheduler splits the core's time between the two, so
  # their req/s ratio is the inverse ratio of their CPU per request, and
  # whatever else the machine runs meanwhile slows both alike (alternating
  # rounds swing by ±20% here from one 10 s window to the next).
  for r in $(seq "$ROUNDS"); do
    wrk_run "$W/wrk-p1co-roster-$r.txt" "${URL[roster]}" &
    co=$!
    wrk_run "$W/wrk-p1co-bare-$r.txt" "${URL[bare]}"
    wait "$co" || true
    log "  co-run $r: roster $(awk '/^Requests\/sec/ {print $2}' "$W/wrk-p1co-roster-$r.txt"), bare $(awk '/^Requests\/sec/ {print $2}' "$W/wrk-p1co-bare-$r.txt") req/s"
  done
  fact p1.roster_rss_kb "$(kb "$R1_PID" VmRSS)"
  fact p1.nginx_version "$(nginx -v 2>&1 | sed 's/.*: //')"
  fact p1.haproxy_version "$(haproxy -v | head -1 | awk '{print $3}')"
  stop "$R1_PID" INT; stop "$NGINX_PID"; stop "$HAPROXY_PID"; stop "$BARE_PID" INT
fi

# ---------------------------------------------------------------- parts 3 and 2
# One LB holds the 10,000 backends for both: part 3 fills it and measures it,
# part 2 then sends traffic through it and through an LB with 10 backends
# (same flags: both check every 5s, as in production). Filling 10,000 is the
# slow step, so it happens once.
if want 2 || want 3; then
  log "part 3: $BACKENDS backends checked every 5s"
  roster_lb r3 "$P_R3" --health-interval 5s --lease-ttl 1h --max-backends "$BACKENDS"
  R3_PID=$LAST_PID
  pin_control_plane "$R3_PID"
  CTL3=$((P_R3 + 1))
  fact p3.rss_empty_kb "$(kb "$R3_PID" VmRSS)"
  c0=$(ticks "$R3_PID"); t0=$(now)
  farm register --lb "127.0.0.1:$CTL3" --count "$BACKENDS" --app-port "$P_GEN" \
    --metrics-port "$P_VITALS" --concurrency 64 >"$W/p3-register.json"
  farm wait-routable --lb "127.0.0.1:$CTL3" --count "$BACKENDS" --timeout 240s >"$W/p3-routable.json" 2>>"$W/clients.log" ||
    log "  not all $BACKENDS routable within 240 s"
  t1=$(now); c1=$(ticks "$R3_PID")
  fact p3.all_routable_s "$(awk -v s="$t0" -v e="$t1" 'BEGIN {printf "%.2f", e - s}')"
  fact p3.fill_cpu_percent "$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.1f", (b - a) / hz / (e - s) * 100}')"
  fact p3.fill_failed_checks "$(telemetry_sum "$CTL3" 'roster_lb_health_checks_total[{]result="(failed|id_mismatch)"')"
  sleep 6 # one interval: every entry is on its own 5s cycle now
  # Window A: checks alone (leases last 1h, nobody heartbeats).
  k0=$(telemetry_sum "$CTL3" roster_lb_health_checks_total)
  s0=$(telemetry_sum "$CTL3" roster_lb_health_check_duration_seconds_sum)
  n0=$(telemetry_sum "$CTL3" roster_lb_health_check_duration_seconds_count)
  f0=$(telemetry_sum "$CTL3" 'roster_lb_health_checks_total[{]result="(failed|id_mismatch)"'); t0=$(now)
  cpu_window "$R3_PID" "$CPU_SECONDS" p3.checks
  k1=$(telemetry_sum "$CTL3" roster_lb_health_checks_total)
  s1=$(telemetry_sum "$CTL3" roster_lb_health_check_duration_seconds_sum)
  n1=$(telemetry_sum "$CTL3" roster_lb_health_check_duration_seconds_count)
  f1=$(telemetry_sum "$CTL3" 'roster_lb_health_checks_total[{]result="(failed|id_mismatch)"'); t1=$(now)
  fact p3.checks_per_s "$(awk -v a="$k0" -v b="$k1" -v s="$t0" -v e="$t1" 'BEGIN {printf "%.0f", (b - a) / (e - s)}')"
  fact p3.check_mean_ms "$(awk -v a="$s0" -v b="$s1" -v m="$n0" -v n="$n1" 'BEGIN {printf "%.2f", (n > m) ? (b - a) / (n - m) * 1000 : 0}')"
  fact p3.failed_checks "$(awk -v a="$f0" -v b="$f1" 'BEGIN {printf "%d", b - a}')"
  # Window B: plus the heartbeats agents send with the default 90s lease
  # (each backend re-registers about every 30s).
  taskset -c "$LOAD_CPUS" timeout $((CPU_SECONDS + 30)) "$FARM" heartbeat --lb "127.0.0.1:$CTL3" \
    --count "$BACKENDS" --app-port "$P_GEN" --metrics-port "$P_VITALS" \
    --period 30s --duration "${CPU_SECONDS}s" >"$W/p3-heartbeat.json" 2>>"$W/clients.log" &
  HB_PID=$!
  PIDS+=("$HB_PID")
  cpu_window "$R3_PID" "$CPU_SECONDS" p3.heartbeats
  wait "$HB_PID" || true
  farm flip --farm "127.0.0.1:$P_FARMCTL" --lb "127.0.0.1:$CTL3" --first 0 --count 100 \
    --stride $((BACKENDS >= 200 ? BACKENDS / 100 : 1)) --total "$BACKENDS" --timeout 30s >"$W/p3-flip.json" 2>>"$W/clients.log" || true
  fact p3.final_rss_kb "$(kb "$R3_PID" VmRSS)"
  fact p3.final_hwm_kb "$(kb "$R3_PID" VmHWM)"
  fact p3.threads "$(awk '/^Threads:/ {print $2}' "/proc/$R3_PID/status")"
  fact p3.fds "$(find "/proc/$R3_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
  curl -s --max-time 5 "http://127.0.0.1:$P_FARMCTL/stats" >"$W/p3-farm-stats.json"

  log "part 2: roster with 10 vs $BACKENDS backends (${ROUNDS} rounds x ${DURATION}s)"
  roster_lb r10 "$P_R10" --health-interval 5s --lease-ttl 1h
  R10_PID=$LAST_PID
  pin_control_plane "$R10_PID"
  farm register --lb "127.0.0.1:$((P_R10 + 1))" --count 10 --app-port "$P_GEN" \
    --metrics-port "$P_VITALS" >"$W/p2-register-10.json"
  farm wait-routable --lb "127.0.0.1:$((P_R10 + 1))" --count 10 --timeout 60s >/dev/null
  # The 100 flipped back to ready in part 3 must be routable again.
  farm wait-routable --lb "127.0.0.1:$CTL3" --count "$BACKENDS" --timeout 60s >/dev/null 2>>"$W/clients.log" ||
    log "  the $BACKENDS-backend LB is not back to $BACKENDS routable"
  declare -A URL2=([10]="http://127.0.0.1:$P_R10/" [10k]="http://127.0.0.1:$P_R3/")
  declare -A LB2=([10]="$R10_PID" [10k]="$R3_PID")
  for t in 10 10k; do DURATION=2 wrk_run "$W/warmup2-$t.txt" "${URL2[$t]}"; done
  for r in $(seq "$ROUNDS"); do
    for t in 10 10k; do
      curl -s --max-time 5 "http://127.0.0.1:$P_FARMCTL/stats" >"$W/stats-p2-$t-$r-before.json"
      wrk_run "$W/wrk-p2-$t-$r.txt" "${URL2[$t]}"
      curl -s --max-time 5 "http://127.0.0.1:$P_FARMCTL/stats" >"$W/stats-p2-$t-$r-after.json"
      log "  round $r $t: $(awk '/^Requests\/sec/ {print $2}' "$W/wrk-p2-$t-$r.txt") req/s"
    done
  done
  fact p2.rss_10_kb "$(kb "$R10_PID" VmRSS)"
  fact p2.rss_10k_kb "$(kb "$R3_PID" VmRSS)"
  fact p2.fds_10k "$(find "/proc/$R3_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)"
  stop "$R10_PID" INT; stop "$R3_PID" INT

  # The same two pool sizes through bare pingora (same backends, round
  # robin): what a pool of 10,000 costs pingora itself. After the roster
  # LBs are gone, so the farm never holds both LBs' 10,000 pooled
  # connections at once (its file limit).
  log "part 2: bare pingora with 10 vs $BACKENDS upstreams"
  gen() { # FIRST COUNT: --upstream for generated backends (benchfarm's numbering)
    local i
    for ((i = $1; i < $1 + $2; i++)); do
      printf -- '--upstream\n127.%d.%d.%d:%d\n' $((10 + i / 62500)) $(((i / 250) % 250)) $((i % 250 + 1)) "$P_GEN"
    done
  }
  mapfile -t UP10 < <(gen 0 10)
  mapfile -t UP10K < <(gen 0 "$BACKENDS")
  start bare10 "$PROXY_CPUS" "$BARE" --listen "127.0.0.1:$P_B10" --threads "$THREADS" "${UP10[@]}"
  B10_PID=$LAST_PID
  start bare10k "$PROXY_CPUS" "$BARE" --listen "127.0.0.1:$P_B10K" --threads "$THREADS" "${UP10K[@]}"
  B10K_PID=$LAST_PID
  wait_port "$P_B10" bare10
  wait_port "$P_B10K" bare10k
  declare -A URL2B=([bare10]="http://127.0.0.1:$P_B10/" [bare10k]="http://127.0.0.1:$P_B10K/")
  for t in bare10 bare10k; do DURATION=4 wrk_run "$W/warmup2-$t.txt" "${URL2B[$t]}"; done
  for r in $(seq "$ROUNDS"); do
    for t in bare10 bare10k; do
      wrk_run "$W/wrk-p2-$t-$r.txt" "${URL2B[$t]}"
      log "  round $r $t: $(awk '/^Requests\/sec/ {print $2}' "$W/wrk-p2-$t-$r.txt") req/s"
    done
  done
  stop "$B10_PID" INT; stop "$B10K_PID" INT
fi

# ---------------------------------------------------------------- part 4
# The sidecar `roster-agent` is measured; `roster agent` (the same agent in
# the full binary) runs beside it over the same window, for reference.
if want 4; then
  if [ -x "$AGENT_BIN" ]; then
    log "part 4: one idle roster-agent (and one roster agent) for ${AGENT_SECONDS}s"
    roster_lb r4 "$P_R4"
    R4_PID=$LAST_PID
    start agent "$PROXY_CPUS" "$AGENT_BIN" --discovery-lb "127.0.0.1:$((P_R4 + 1))" \
      --metrics-port "$P_AGENT" --id bench-agent --address "127.0.0.1:$P_APP"
    AGENT_PID=$LAST_PID
    start agent-full "$PROXY_CPUS" "$ROSTER" agent --discovery-lb "127.0.0.1:$((P_R4 + 1))" \
      --metrics-port "$((P_AGENT + 1))" --id bench-agent-full --address "127.0.0.1:$((P_APP + 1))"
    FULL_PID=$LAST_PID
    sleep 5
    if kill -0 "$AGENT_PID" 2>/dev/null; then
      fact p4.status ran
      fact p4.rss_start_kb "$(kb "$AGENT_PID" VmRSS)"
      cpu_window "$AGENT_PID" "$AGENT_SECONDS" p4
      fact p4.threads "$(awk '/^Threads:/ {print $2}' "/proc/$AGENT_PID/status")"
      fact p4.anon_kb "$(kb "$AGENT_PID" RssAnon)"
      fact p4.file_kb "$(kb "$AGENT_PID" RssFile)"
      fact p4.full_rss_kb "$(kb "$FULL_PID" VmRSS 2>/dev/null || echo 0)"
      fact p4.size_kb "$(($(stat -c %s "$AGENT_BIN") / 1024))"
      fact p4.full_size_kb "$(($(stat -c %s "$ROSTER") / 1024))"
      if curl -s --max-time 5 "http://127.0.0.1:$((P_R4 + 1))/backends" | grep -q "127.0.0.1:$P_APP"; then
        fact p4.routable yes
      else
        fact p4.routable no
      fi
    else
      fact p4.status "exited: $(tail -3 "$W/agent.log" | tr '\t\n' '  ')"
    fi
    stop "$AGENT_PID"; stop "$FULL_PID"; stop "$R4_PID" INT
  else
    fact p4.status "skipped: no roster-agent beside $ROSTER"
    log "part 4: skipped (no $AGENT_BIN)"
  fi
fi

# ---------------------------------------------------------------- part 5
# Each listener in turn, with its default limits (only what routing needs:
# loopback allowed, a 1h lease for the one backend): for BENCH_ABUSE_SECONDS,
# idle and slowloris connections (re-opened when the server closes them)
# and a normal client polling a cheap route every 100 ms, all from
# bench/abuse.py on the load cores; it samples the server's fds and RSS.
# A fresh process per listener, so one window's leftovers do not count in
# the next. Results: $W/p5-NAME.json, one line each.
if want 5; then
  log "part 5: hostile clients, ${ABUSE_IDLE} idle + ${ABUSE_SLOW} slowloris for ${ABUSE_SECONDS}s per listener"
  fact p5.seconds "$ABUSE_SECONDS"
  fact p5.idle "$ABUSE_IDLE"
  fact p5.slow "$ABUSE_SLOW"
  # abuse NAME PORT PID ABUSE-FLAGS...: one bounded window against 127.0.0.1:PORT.
  abuse() {
    local name=$1 port=$2 pid=$3
    shift 3
    fact "p5.$name.status" ran
    timeout $((ABUSE_SECONDS + 20)) taskset -c "$LOAD_CPUS" python3 bench/abuse.py \
      --target "127.0.0.1:$port" --idle "$ABUSE_IDLE" --slow "$ABUSE_SLOW" --seconds "$ABUSE_SECONDS" \
      --pid "$pid" --out "$W/p5-$name.json" "$@" 2>"$W/p5-$name.log" ||
      fact "p5.$name.status" "abuse.py failed: $(tail -1 "$W/p5-$name.log" | tr '\t' ' ')"
    log "  $name: $(tail -1 "$W/p5-$name.log")"
    kill -0 "$pid" 2>/dev/null || fact "p5.$name.status" "the server exited during the window"
  }
  # skip5 NAME WHY: a listener that could not be measured.
  skip5() { fact "p5.$1.status" "not measured: $2"; log "  $1: not measured: $2"; }
  lb5() { # NAME PORT: an LB on PORT (proxy) and PORT+1 (control), default limits
    start "$1" "$PROXY_CPUS" "$ROSTER" lb --listen "127.0.0.1:$2" --control-listen "127.0.0.1:$(($2 + 1))" \
      --threads "$THREADS" --allowed-networks 127.0.0.0/8 --lease-ttl 1h ${BENCH_LB_FLAGS:-}
  }

  # The proxy port, routing to one farm app.
  lb5 r5 "$P_R5"
  R5_PID=$LAST_PID
  if listening "$((P_R5 + 1))" "$R5_PID" && listening "$P_R5" "$R5_PID" &&
    farm register --lb "127.0.0.1:$((P_R5 + 1))" --metrics-port "$P_VITALS" \
      --address "127.0.0.1:$P_APP" >"$W/p5-register.json" 2>>"$W/clients.log" &&
    farm wait-routable --lb "127.0.0.1:$((P_R5 + 1))" --count 1 --timeout 30s >/dev/null 2>>"$W/clients.log"; then
    abuse proxy "$P_R5" "$R5_PID" --poll-path /
  else
    skip5 proxy "the LB did not start or the backend did not become routable (r5.log)"
  fi
  stop "$R5_PID" INT

  # The control API of a fresh LB; the agent below announces to it.
  lb5 r5c "$P_R5C"
  R5C_PID=$LAST_PID
  if listening "$((P_R5C + 1))" "$R5C_PID"; then
    abuse control "$((P_R5C + 1))" "$R5C_PID" --poll-path /healthz
  else
    skip5 control "the LB did not start (r5c.log)"
  fi

  # An agent's vitals port: the sidecar binary if it is there.
  agent5=("$AGENT_BIN"); fact p5.agent "roster-agent"
  [ -x "$AGENT_BIN" ] || { agent5=("$ROSTER" agent); fact p5.agent "roster agent"; }
  # --drain-period only shortens the exit after the window.
  start agent5 "$PROXY_CPUS" "${agent5[@]}" --discovery-lb "127.0.0.1:$((P_R5C + 1))" \
    --metrics-port "$P_V5" --metrics-listen 127.0.0.1 --id bench-abuse-agent \
    --address "127.0.0.1:$P_APP" --drain-period 1s
  A5_PID=$LAST_PID
  if listening "$P_V5" "$A5_PID"; then
    abuse vitals "$P_V5" "$A5_PID" --poll-path /healthz
  else
    skip5 vitals "the agent did not start (agent5.log)"
  fi
  stop "$A5_PID"; stop "$R5C_PID" INT

  # The injector (HTTPS) with a certificate it generates itself.
  if "$ROSTER" inject --generate-cert "$W/p5-tls" --dns-name localhost >"$W/p5-cert.log" 2>&1; then
    start inject5 "$PROXY_CPUS" "$ROSTER" inject --listen "127.0.0.1:$P_INJ" \
      --tls-cert "$W/p5-tls/tls.crt" --tls-key "$W/p5-tls/tls.key"
    I5_PID=$LAST_PID
    if listening "$P_INJ" "$I5_PID"; then
      abuse injector "$P_INJ" "$I5_PID" --tls --poll-path /healthz
    else
      skip5 injector "roster inject did not start (inject5.log)"
    fi
    stop "$I5_PID"
  else
    skip5 injector "roster inject --generate-cert failed (p5-cert.log)"
  fi
fi

# ---------------------------------------------------------------- parts 6, 7
# Own scripts (each bounded, each stops what it starts); they read these.
export ROSTER BARE LOADAWARE FARM PROXY_CPUS LOAD_CPUS BASE
if want 6; then
  log "part 6: instructions per request under callgrind"
  bench/instructions.sh "$W" || log "  part 6 failed"
fi
if want 7; then
  log "part 7: load-aware selection, 2 replicas, 4 backends, one degraded"
  bench/loadaware.sh "$W" || log "  part 7 failed"
fi

# ---------------------------------------------------------------- part 8
# One LB tier, many services: 10,000 backends across 1,000 services (one
# host route each, checked every 5 s) against one service of 10 backends
# and no routes; wrk sends to one 10-backend service of the big LB by Host.
if want 8; then
  SERVICES=${BENCH_SERVICES:-1000}
  log "part 8: $BACKENDS backends across $SERVICES services vs one service (${ROUNDS} rounds x ${DURATION}s)"
  routes=$W/p8-routes.yaml
  { echo "routes:"; for i in $(seq 0 $((SERVICES - 1))); do echo "  - {host: svc-$i.bench, service: svc-$i}"; done; } >"$routes"
  roster_lb r8 "$P_R8" --config "$routes" --health-interval 5s --lease-ttl 1h --max-backends "$BACKENDS"
  R8_PID=$LAST_PID
  c0=$(ticks "$R8_PID"); t0=$(now)
  farm register --lb "127.0.0.1:$((P_R8 + 1))" --count "$BACKENDS" --services "$SERVICES" \
    --app-port "$P_GEN" --metrics-port "$P_VITALS" --concurrency 64 >"$W/p8-register.json"
  wait_until_s=$((SECONDS + 240))
  until [ "$(curl -s --max-time 5 "http://127.0.0.1:$((P_R8 + 1))/services" |
    python3 -c 'import json,sys; print(sum(s["routable"] for s in json.load(sys.stdin)))' 2>/dev/null)" = "$BACKENDS" ]; do
    [ $SECONDS -lt $wait_until_s ] || { log "  not all routable within 240 s"; break; }
    sleep 1
  done
  t1=$(now); c1=$(ticks "$R8_PID")
  fact p8.services "$SERVICES"
  fact p8.all_routable_s "$(awk -v s="$t0" -v e="$t1" 'BEGIN {printf "%.2f", e - s}')"
  sleep 6
  cpu_window "$R8_PID" "$CPU_SECONDS" p8.checks
  roster_lb r8one "$P_R8ONE" --health-interval 5s --lease-ttl 1h
  R8ONE_PID=$LAST_PID
  farm register --lb "127.0.0.1:$((P_R8ONE + 1))" --count 10 --app-port "$P_GEN" \
    --metrics-port "$P_VITALS" >"$W/p8-register-one.json"
  farm wait-routable --lb "127.0.0.1:$((P_R8ONE + 1))" --count 10 --timeout 60s >/dev/null
  declare -A URL8=([one]="http://127.0.0.1:$P_R8ONE/" [many]="http://127.0.0.1:$P_R8/")
  p8_wrk() { # FILE TARGET
    taskset -c "$LOAD_CPUS" timeout $((DURATION + 30)) \
      wrk -t"$LOAD_THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H "Host: svc-7.bench" "${URL8[$2]}" >"$1" 2>&1 || true
  }
  # As in part 2: the checks (10,000 every 5 s) run on the load core, so
  # the proxy core measures proxying.
  pin_control_plane "$R8_PID"
  pin_control_plane "$R8ONE_PID"
  for t in one many; do DURATION=2 p8_wrk "$W/warmup8-$t.txt" "$t"; done
  for r in $(seq "$ROUNDS"); do
    for t in one many; do p8_wrk "$W/p8-$t-$r.txt" "$t"; done
  done
  # Co-run, as in part 1: both loaded at once, sharing the proxy core.
  for r in $(seq "$ROUNDS"); do
    p8_wrk "$W/p8co-one-$r.txt" one &
    co=$!
    p8_wrk "$W/p8co-many-$r.txt" many
    wait "$co" || true
  done
  fact p8.rss_many_kb "$(kb "$R8_PID" VmRSS)"
  fact p8.rss_one_kb "$(kb "$R8ONE_PID" VmRSS)"
  stop "$R8ONE_PID"
  stop "$R8_PID"
fi

# ---------------------------------------------------------------- part 9
if want 9; then
  log "part 9: h2c, TLS HTTP/1.1, TLS HTTP/2: roster vs nginx vs HAProxy (${ROUNDS} rounds x ${DURATION}s)"
  export P_APP P_VITALS DURATION ROUNDS CONNS THREADS
  bench/protocols.sh "$W" || log "  part 9 failed"
fi

stop "$FARM_PID"
fact load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
fact total_s "$(($(date +%s) - STARTED))"
fact run.finished "$(date -u '+%Y-%m-%d %H:%M UTC')"
log "writing $OUT"
python3 bench/report.py "$W" "$OUT"
log "done in $(($(date +%s) - STARTED))s"
