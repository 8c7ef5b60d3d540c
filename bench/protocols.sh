#!/usr/bin/env bash
# Part 9 of `make bench`: protocols. roster, nginx and HAProxy with the same
# certificate (ECDSA P-256, openssl) and the same four farm backends (HTTP/1.1
# keep-alive upstream for all three), placed as in part 1: the proxy on
# PROXY_CPUS, the clients and the farm on LOAD_CPUS. Rows:
#   h2c      HTTP/2 prior knowledge on a plaintext port (h2load, STREAMS
#            streams per connection)
#   tls-h1   HTTP/1.1 over TLS (wrk; no ALPN)
#   tls-h2   HTTP/2 over TLS, ALPN h2 (h2load)
# Rounds alternate the proxies (roster nginx haproxy roster ...) after a 2 s
# warm-up each; the report takes medians.
#
#   bench/protocols.sh WORKDIR        (bench/run.sh calls it as part 9)
#
# Environment (bench/run.sh sets them): ROSTER FARM PROXY_CPUS LOAD_CPUS BASE
# P_APP P_VITALS DURATION ROUNDS CONNS THREADS; BENCH_STREAMS=10.
# Results: WORKDIR/p9-ROW-TARGET-ROUND.txt (wrk or h2load output); facts p9.*.
# Every process it starts is stopped by PID; every run is bounded by timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
W=$1
STREAMS=${BENCH_STREAMS:-10}
BASE=${BASE:-27000}
P=$((BASE + 800))
P_RO=$P; P_RO_CTL=$((P + 1)); P_RO_TLS=$((P + 2))
P_NG=$((P + 10)); P_NG_TLS=$((P + 12))
P_HA=$((P + 20)); P_HA_TLS=$((P + 22))
FACTS=$W/facts.tsv
fact() { printf '%s\t%s\n' "$1" "$2" >>"$FACTS"; }
LOAD_THREADS=$(taskset -c "$LOAD_CPUS" nproc)
for t in wrk h2load openssl nginx haproxy; do
  command -v "$t" >/dev/null || { echo "part 9: missing $t (apt-get install nghttp2-client wrk nginx haproxy openssl)" >&2; exit 1; }
done

MY_PIDS=()
cleanup9() { local p; for p in "${MY_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup9 EXIT
start9() { # NAME CMD...
  local name=$1
  shift
  taskset -c "$PROXY_CPUS" "$@" >"$W/p9-$name.log" 2>&1 &
  MY_PIDS+=("$!")
}
wait9() { # PORT NAME
  local i
  for i in $(seq 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "part 9: $2 did not listen on $1" >&2
  tail -20 "$W/p9-$2.log" >&2 || true
  exit 1
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$W/p9-tls.key" -out "$W/p9-tls.crt" 2>/dev/null
cat "$W/p9-tls.crt" "$W/p9-tls.key" >"$W/p9-tls.pem" # HAProxy's crt: both in one file

ups="" srv=""
for i in 0 1 2 3; do
  ups+="    server 127.0.0.1:$((P_APP + i));"$'\n'
  srv+="    server b$i 127.0.0.1:$((P_APP + i)) check port $P_VITALS inter 5s"$'\n'
done
mkdir -p "$W/p9-nginx"
# As bench/nginx.conf.in (part 1), with an h2c port and a TLS port (h2 by
# ALPN, http/1.1 otherwise). nginx 1.22: `http2` is a listen parameter.
cat >"$W/p9-nginx.conf" <<EOF
worker_processes $THREADS;
pid $W/p9-nginx/nginx.pid;
error_log $W/p9-nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $W/p9-nginx/body;
  proxy_temp_path $W/p9-nginx/proxy;
  fastcgi_temp_path $W/p9-nginx/fastcgi;
  uwsgi_temp_path $W/p9-nginx/uwsgi;
  scgi_temp_path $W/p9-nginx/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  http2_max_concurrent_streams 128;
  upstream backends {
${ups}    keepalive 128;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:$P_NG http2;
    listen 127.0.0.1:$P_NG_TLS ssl http2;
    ssl_certificate $W/p9-tls.crt;
    ssl_certificate_key $W/p9-tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_connect_timeout 1s;
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 3;
    }
  }
}
EOF
# As bench/haproxy.cfg.in (part 1), with an h2c bind and a TLS bind.
cat >"$W/p9-haproxy.cfg" <<EOF
global
    nbthread $THREADS
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option forwardfor
    retries 2
    option redispatch
frontend proxy
    bind 127.0.0.1:$P_HA proto h2
    bind 127.0.0.1:$P_HA_TLS ssl crt $W/p9-tls.pem alpn h2,http/1.1
    default_backend backends
backend backends
    balance roundrobin
    http-reuse always
    option httpchk GET /metrics
${srv}
EOF

start9 roster "$ROSTER" lb --listen "127.0.0.1:$P_RO" --control-listen "127.0.0.1:$P_RO_CTL" \
  --tls-listen "127.0.0.1:$P_RO_TLS" --tls-cert "$W/p9-tls.crt:$W/p9-tls.key" \
  --threads "$THREADS" --allowed-networks 127.0.0.0/8 --rate-limit 0 --lease-ttl 1h \
  --warmup 0s ${BENCH_LB_FLAGS:-}
RO_PID=${MY_PIDS[-1]}
wait9 "$P_RO_CTL" roster
wait9 "$P_RO_TLS" roster
taskset -c "$LOAD_CPUS" timeout 60 "$FARM" register --lb "127.0.0.1:$P_RO_CTL" --metrics-port "$P_VITALS" \
  --address "127.0.0.1:$P_APP" --address "127.0.0.1:$((P_APP + 1))" \
  --address "127.0.0.1:$((P_APP + 2))" --address "127.0.0.1:$((P_APP + 3))" >"$W/p9-register.json"
taskset -c "$LOAD_CPUS" timeout 60 "$FARM" wait-routable --lb "127.0.0.1:$P_RO_CTL" --count 4 --timeout 30s >/dev/null
start9 nginx nginx -p "$W/p9-nginx" -c "$W/p9-nginx.conf" -g 'daemon off;'
wait9 "$P_NG_TLS" nginx
start9 haproxy haproxy -db -f "$W/p9-haproxy.cfg"
wait9 "$P_HA_TLS" haproxy

declare -A H2C=([roster]="http://127.0.0.1:$P_RO/" [nginx]="http://127.0.0.1:$P_NG/" [haproxy]="http://127.0.0.1:$P_HA/")
declare -A TLS=([roster]="https://127.0.0.1:$P_RO_TLS/" [nginx]="https://127.0.0.1:$P_NG_TLS/" [haproxy]="https://127.0.0.1:$P_HA_TLS/")
run9() { # ROW TARGET OUTFILE SECONDS
  local row=$1 t=$2 out=$3 secs=$4
  case $row in
    h2c | tls-h2)
      local url=${H2C[$t]}
      [ "$row" = tls-h2 ] && url=${TLS[$t]}
      timeout $((secs + 30)) taskset -c "$LOAD_CPUS" h2load -D "$secs" -c "$CONNS" -m "$STREAMS" \
        -t "$LOAD_THREADS" "$url" >"$out" 2>&1 || true ;;
    tls-h1)
      timeout $((secs + 30)) taskset -c "$LOAD_CPUS" wrk -t"$LOAD_THREADS" -c"$CONNS" -d"${secs}s" \
        --latency "${TLS[$t]}" >"$out" 2>&1 || true ;;
  esac
}
rate9() { awk '/^finished in/ {gsub(",", "", $4); print $4} /^Requests\/sec/ {print $2}' "$1"; }
for row in h2c tls-h1 tls-h2; do
  for t in roster nginx haproxy; do run9 "$row" "$t" "$W/p9-warmup-$row-$t.txt" 2; done
  for r in $(seq "$ROUNDS"); do
    for t in roster nginx haproxy; do
      run9 "$row" "$t" "$W/p9-$row-$t-$r.txt" "$DURATION"
      echo "[part 9] $row round $r $t: $(rate9 "$W/p9-$row-$t-$r.txt") req/s" >&2
    done
  done
done
fact p9.streams "$STREAMS"
fact p9.roster_rss_kb "$(awk '/^VmRSS:/ {print $2}' "/proc/$RO_PID/status")"
fact p9.h2load_version "$(h2load --version | head -1)"
