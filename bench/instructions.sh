#!/usr/bin/env bash
# Part 6 of `make bench`: instructions per proxied request, counted by
# callgrind, for roster, bare pingora, nginx and HAProxy. Deterministic where
# req/s on a shared 2-core machine is not: each proxy runs under
# `valgrind --tool=callgrind` twice, once with WARM requests and once with
# WARM + COUNT, from one keep-alive connection one request at a time
# (bench/fixedclient.py), counting only while the client runs
# (`callgrind_control -z`, then `-d`); (Ir[WARM+COUNT] - Ir[WARM]) / COUNT is
# the cost of a request with the client's connection subtracted too.
#
#   bench/instructions.sh WORKDIR      (bench/run.sh calls it as part 6)
#
# Environment (bench/run.sh sets them): ROSTER BARE LOADAWARE FARM
# PROXY_CPUS LOAD_CPUS BASE; BENCH_CG_COUNT=3000 BENCH_CG_WARM=300
# BENCH_ROSTER_BASE=/path/to/roster (adds target roster-base: an A/B build)
# BENCH_CG_SIZES="3 1024 65536 1048576" (body bytes; sizes past the first
# are measured for roster, bare and nginx) BENCH_CG_TARGETS="roster bare bare-nt nginx haproxy"
# (also: roster-base, and bare-nt = bare pingora without peer timeouts).
# BENCH_CG_H2C=1 adds roster-h2c and bare-h2c at the first size: the same
# targets speaking HTTP/2 (h2c) to backends that serve it.
# Facts go to WORKDIR/facts.tsv as p6.<target>.<size>.ir_per_request.
# Loopback only; every process is stopped by PID; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
W=$1
COUNT=${BENCH_CG_COUNT:-3000}
WARM=${BENCH_CG_WARM:-300}
SIZES=${BENCH_CG_SIZES:-3 1024 65536 1048576}
TARGETS=${BENCH_CG_TARGETS:-roster bare bare-nt nginx haproxy}
BASE=${BASE:-27000}
P_B=$((BASE + 700)); P_V=$((BASE + 790)); P_T=$((BASE + 800))
FACTS=$W/facts.tsv
fact() { printf '%s\t%s\n' "$1" "$2" >>"$FACTS"; }
log() { printf '[bench p6] %s\n' "$*" >&2; }

PIDS=()
cleanup() { local p; for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

listening() { # PORT PID: wait up to 120 s (valgrind starts slowly)
  local i
  for i in $(seq 1200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
stop_wait() { # PID SIGNAL: signal, wait up to 120 s for callgrind to write its file
  local i
  kill "-$2" "$1" 2>/dev/null || return 0
  for i in $(seq 1200); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

# The proxy configs: the part-1 templates, one process, no daemon.
ups="" srv=""
for i in 0 1 2 3; do
  ups+="        server 127.0.0.1:$((P_B + i));"$'\n'
  srv+="    server b$i 127.0.0.1:$((P_B + i)) check port $P_V inter 5s"$'\n'
done
sed -e "s|@THREADS@|1|; s|@DIR@|$W|g; s|@LISTEN@|127.0.0.1:$P_T|" bench/nginx.conf.in |
  awk -v u="${ups%$'\n'}" '{ if ($0 == "@UPSTREAMS@") print u; else print }' >"$W/p6-nginx.conf"
sed -e "s|@THREADS@|1|; s|@LISTEN@|127.0.0.1:$P_T|" bench/haproxy.cfg.in |
  awk -v s="${srv%$'\n'}" '{ if ($0 == "@SERVERS@") print s; else print }' >"$W/p6-haproxy.cfg"

# cg_run TARGET SIZE N: one callgrind run with N requests; sets IR to its total.
cg_run() {
  local t=$1 size=$2 n=$3 out=$W/p6-$1-$2-$3.cg pid
  IR=0
  local vg=(valgrind --tool=callgrind --callgrind-out-file="$out")
  case $t in
    roster | roster-h2c) taskset -c "$PROXY_CPUS" "${vg[@]}" "$ROSTER" lb --listen "127.0.0.1:$P_T" \
      --control-listen "127.0.0.1:$((P_T + 1))" --threads 1 --allowed-networks 127.0.0.0/8 \
      --rate-limit 0 --lease-ttl 1h --health-interval 1h ${BENCH_LB_FLAGS:-} \
      $([ "$t" = roster-h2c ] && echo --upstream-protocol h2c) >"$W/p6-$t.log" 2>&1 & ;;
    roster-base) taskset -c "$PROXY_CPUS" "${vg[@]}" "${BENCH_ROSTER_BASE:?set BENCH_ROSTER_BASE to a roster binary}" lb --listen "127.0.0.1:$P_T" \
      --control-listen "127.0.0.1:$((P_T + 1))" --threads 1 --allowed-networks 127.0.0.0/8 \
      --rate-limit 0 --lease-ttl 1h --health-interval 1h >"$W/p6-$t.log" 2>&1 & ;;
    bare | bare-h2c) taskset -c "$PROXY_CPUS" "${vg[@]}" "$BARE" --listen "127.0.0.1:$P_T" --threads 1 \
      $([ "$t" = bare-h2c ] && echo --h2c) \
      --upstream "127.0.0.1:$P_B" --upstream "127.0.0.1:$((P_B + 1))" \
      --upstream "127.0.0.1:$((P_B + 2))" --upstream "127.0.0.1:$((P_B + 3))" >"$W/p6-$t.log" 2>&1 & ;;
    bare-nt) taskset -c "$PROXY_CPUS" "${vg[@]}" "$BARE" --listen "127.0.0.1:$P_T" --threads 1 --no-timeouts \
      --upstream "127.0.0.1:$P_B" --upstream "127.0.0.1:$((P_B + 1))" \
      --upstream "127.0.0.1:$((P_B + 2))" --upstream "127.0.0.1:$((P_B + 3))" >"$W/p6-$t.log" 2>&1 & ;;
    nginx) taskset -c "$PROXY_CPUS" "${vg[@]}" nginx -p "$W" -c "$W/p6-nginx.conf" \
      -g 'daemon off; master_process off;' >"$W/p6-$t.log" 2>&1 & ;;
    haproxy) taskset -c "$PROXY_CPUS" "${vg[@]}" haproxy -db -f "$W/p6-haproxy.cfg" >"$W/p6-$t.log" 2>&1 & ;;
  esac
  pid=$!
  PIDS+=("$pid")
  listening "$P_T" "$pid" || { log "$t did not listen (p6-$t.log)"; return; }
  if [[ $t == roster* ]]; then
    listening "$((P_T + 1))" "$pid" || return
    timeout 120 "$FARM" register --lb "127.0.0.1:$((P_T + 1))" --metrics-port "$P_V" \
      --address "127.0.0.1:$P_B" --address "127.0.0.1:$((P_B + 1))" \
      --address "127.0.0.1:$((P_B + 2))" --address "127.0.0.1:$((P_B + 3))" >/dev/null
    timeout 150 "$FARM" wait-routable --lb "127.0.0.1:$((P_T + 1))" --count 4 --timeout 120s >/dev/null
  fi
  # Count only while the client runs: start-up, registration polls and
  # shutdown vary from run to run and would not cancel out exactly.
  callgrind_control -z "$pid" >/dev/null 2>&1 || log "$t: could not zero the counters"
  timeout 600 taskset -c "$LOAD_CPUS" python3 bench/fixedclient.py --target "127.0.0.1:$P_T" \
    --count "$n" >>"$W/p6-client.log" 2>&1 || log "$t $size $n: client errors (p6-client.log)"
  callgrind_control -d "$pid" >/dev/null 2>&1 || log "$t: could not dump the counters"
  case $t in
    haproxy) stop_wait "$pid" TERM ;;
    *) stop_wait "$pid" INT ;;
  esac
  IR=$(awk '/^(summary|totals):/ {print $2; exit}' "$out.1" 2>/dev/null)
  IR=${IR:-0}
}

# measure SIZE TARGETS [BACKEND FLAGS...]: each target over one backend set.
measure() {
  local size=$1 targets=$2 n=$COUNT warm=$WARM t a b per
  shift 2
  # Big bodies: fewer requests, the same bound on time.
  [ "$size" -ge 65536 ] && { n=$((COUNT / 5)); warm=$((WARM / 5)); }
  [ "$size" -ge 1048576 ] && { n=$((COUNT / 15)); warm=$((WARM / 15)); }
  taskset -c "$LOAD_CPUS" "$LOADAWARE" backends --vitals-port "$P_V" --body-bytes "$size" "$@" \
    --backend "127.0.0.1:$P_B" --backend "127.0.0.1:$((P_B + 1))" \
    --backend "127.0.0.1:$((P_B + 2))" --backend "127.0.0.1:$((P_B + 3))" >"$W/p6-backends.log" 2>&1 &
  BPID=$!
  PIDS+=("$BPID")
  listening "$P_B" "$BPID" || { log "backends did not start"; exit 1; }
  for t in $targets; do
    cg_run "$t" "$size" "$warm"; a=$IR
    cg_run "$t" "$size" "$((warm + n))"; b=$IR
    per=$(awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN { if (a > 0 && b > a) printf "%.0f", (b - a) / n; else print 0 }')
    fact "p6.$t.$size.ir_per_request" "$per"
    fact "p6.$t.$size.requests" "$n"
    log "$t body $size: $per instructions per request ($n requests)"
  done
  kill -TERM "$BPID" 2>/dev/null || true
  wait "$BPID" 2>/dev/null || true
}

first=1
for size in $SIZES; do
  targets=""
  for t in $TARGETS; do
    # haproxy and bare-nt at the first size only.
    [ $first = 1 ] || [[ $t != haproxy && $t != bare-nt ]] && targets+=" $t"
  done
  measure "$size" "$targets"
  first=0
done
# HTTP/2 to the backends (h2c by prior knowledge) against HTTP/1.1, first
# size only: roster `--upstream-protocol h2c` and bare pingora with ALPN h2.
if [ "${BENCH_CG_H2C:-1}" != 0 ]; then
  h2_targets=""
  for t in $TARGETS; do
    [[ $t == roster || $t == bare ]] && h2_targets+=" $t-h2c"
  done
  if [ -n "$h2_targets" ]; then measure "${SIZES%% *}" "$h2_targets" --h2c; fi
fi
fact p6.count "$COUNT"
fact p6.warm "$WARM"
