#!/usr/bin/env bash
# End to end on a real cluster (`make e2e`). Scenarios, in order:
#   - `helm install` the chart with its defaults (kubernetes auth: agents
#     register with projected ServiceAccount tokens the LBs check by
#     TokenReview), `helm test`;
#   - an annotated Deployment and DaemonSet, and a namespace opted in with
#     the label roster.dev/inject=enabled (one Deployment opting out);
#   - every LB lists every pod; `kubectl port-forward` to the LB's /backends;
#     traffic through the roster-lb Service;
#   - scale the backends up (seconds until routable), down, and roll them
#     under load: 0 failed requests;
#   - roll the LBs themselves under load: 0 failed requests;
#   - a force-deleted pod leaves /backends within interval x threshold;
#   - the injector down: pods still start (failurePolicy Ignore), uninjected;
#   - Prometheus (kubernetes_sd_configs, as the chart's ServiceMonitor and
#     PodMonitor advertise) scrapes every LB and agent /telemetry, and
#     `promtool check metrics` finds nothing (local provider);
#   - `helm upgrade` with a changed config: the LBs roll, new agents get it;
#   - the DaemonSet LB mode, with hostPort and then hostNetwork, serving traffic;
#   - `helm uninstall` leaves nothing behind.
# The output ends with one row per scenario: its result and its figure.
#
# Providers:
#   local (default): e2e/cluster.sh builds (once, cached in ~/.cache/roster-e2e)
#     and starts a single-node Kubernetes of host processes in a network
#     namespace of its own; every image is built here and imported. Needs
#     root, a Debian machine and the Go module proxy; installs what is missing.
#   kind (E2E_PROVIDER=kind): per version of E2E_VERSIONS, a kind cluster
#     (node images pinned by digest); needs docker, kind, helm and kubectl and
#     skips (exit 0) when one is missing.
#
#   E2E_KEEP=1              keep the (last) cluster
#   LOAD_SECONDS=150        the backends' load run
#   IMAGE=roster:e2e        the roster image tag
#   E2E_NO_CARGO=1          local: use target/release as it is (no cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."

PROVIDER=${E2E_PROVIDER:-local}
IMAGE=${IMAGE:-roster:e2e}
NS=roster
DEMO=roster-e2e-demo
OPTIN=roster-e2e-optin
LOAD_SECONDS=${LOAD_SECONDS:-150}
# The LBs check every 2s and drop a backend after 2 failures.
INTERVAL=2
THRESHOLD=2
HOSTPORT=8088
LOCK=/tmp/roster-build.lock
CLUSTER=""
NODE_IP=""
KUBECTL=kubectl
HELM=helm
# Prefixes: the cluster's network namespace (local), the kube context (kind).
NS_EXEC=()
KCTX=()
HCTX=()

# kind node images: the supported range's edges and the newest. Digests from
# the kind release notes (https://github.com/kubernetes-sigs/kind/releases).
declare -A NODE_IMAGES=(
  [1.29]="kindest/node:v1.29.14@sha256:8703bd94ee24e51b778d5556ae310c6c0fa67d761fae6379c8e0bb480e6fea29"
  [1.30]="kindest/node:v1.30.13@sha256:397209b3d947d154f6641f2d0ce8d473732bd91c87d9575ade99049aa33cd648"
  [1.36]="kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
)

k() { "${NS_EXEC[@]}" "$KUBECTL" "${KCTX[@]}" "$@"; }
h() { "${NS_EXEC[@]}" "$HELM" "${HCTX[@]}" "$@"; }
c() { "${NS_EXEC[@]}" curl "$@"; }
log() { printf '\n=== [%s %s] %s\n' "$(date -u +%H:%M:%S)" "$CLUSTER" "$*"; }

# --- the result table ----------------------------------------------------------
ROWS=()
SCENARIO=""
SCENARIO_START=0
scenario() { SCENARIO=$1; SCENARIO_START=$SECONDS; log "$1"; }
pass() { # figure
  ROWS+=("$(printf '%-9s %-44s %-8s %s' "${CLUSTER:-}" "$SCENARIO" PASS "$1 [$((SECONDS - SCENARIO_START))s]")")
  SCENARIO=""
}
table() {
  [ ${#ROWS[@]} -gt 0 ] || return 0
  echo
  echo "=== e2e results ($PROVIDER)"
  printf '%-9s %-44s %-8s %s\n' cluster scenario result "figure [scenario time]"
  printf '%s\n' "${ROWS[@]}"
}
die() {
  echo "e2e: FAILED [$CLUSTER] ${SCENARIO:-setup} — $*" >&2
  ROWS+=("$(printf '%-9s %-44s %-8s %s' "${CLUSTER:-}" "${SCENARIO:-setup}" FAIL "$*")")
  SCENARIO=""
  exit 1
}

# Every background process this script starts, stopped by PID.
PIDS=()
stop_pids() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  PIDS=()
}

diagnostics() {
  echo "--- diagnostics"
  k get pods -A -o wide || true
  k -n "$NS" get events --sort-by=.lastTimestamp | tail -30 || true
  k -n "$DEMO" get events --sort-by=.lastTimestamp | tail -30 || true
  k -n "$NS" logs -l app.kubernetes.io/component=injector --tail=50 || true
  k -n "$NS" logs -l app.kubernetes.io/component=lb --tail=50 || true
  k -n "$DEMO" logs -l app=demo -c roster-agent --tail=30 || true
}

cluster_down() {
  [ -n "$CLUSTER" ] || return 0
  if [ "${E2E_KEEP:-0}" = 1 ]; then
    echo "cluster kept: $([ "$PROVIDER" = local ] && echo 'e2e/cluster.sh exec kubectl ...; e2e/cluster.sh down' || echo "kubectl --context kind-$CLUSTER ...")"
  elif [ "$PROVIDER" = local ]; then
    e2e/cluster.sh down
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  CLUSTER=""
}

cleanup() {
  local rc=$?
  stop_pids
  if [ $rc -ne 0 ] && [ -n "$CLUSTER" ]; then
    [ -n "$SCENARIO" ] && ROWS+=("$(printf '%-9s %-44s %-8s %s' "$CLUSTER" "$SCENARIO" FAIL "exit $rc")")
    diagnostics
  fi
  cluster_down
  table
  [ $rc -eq 0 ] || echo "e2e: FAILED"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Poll `$@` until it succeeds, at most $1 seconds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${limit}s waiting for $what"
    sleep 0.5
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }

# Port-forward in the background. Sets FWD_PORT and FWD_PID in this shell
# (never call it in $(...): the PID would be lost in the subshell and the
# forward would outlive the script).
FWD_PORT=""
FWD_PID=""
forward() {
  local target=$1 remote=$2 path=${3:-/healthz}
  FWD_PORT=$(free_port)
  k -n "$NS" port-forward "$target" "$FWD_PORT:$remote" >/dev/null 2>&1 &
  FWD_PID=$!
  PIDS+=("$FWD_PID")
  wait_for 20 "port-forward to $target" c -s -o /dev/null --max-time 2 "http://127.0.0.1:$FWD_PORT$path"
}
unforward() { kill "$FWD_PID" 2>/dev/null || true; }

# The demo backend's pod: metadata and spec, at the indent given.
demo_pod() { # name, annotations (YAML map entries), indent
  local name=$1 annotations=$2 pad=$3
  sed "s/^/$pad/" <<EOF
metadata:
  labels: {app: $name}
  annotations: {$annotations}
spec:
  containers:
    - name: web
      image: $IMAGE
      imagePullPolicy: Never
      args: ["demo-backend", "--listen", "0.0.0.0:3000", "--address", "\$(POD_IP):3000", "--metrics-port", "9091", "--discovery-lb", "127.0.0.1:9"]
      env:
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
      ports:
        - {name: http, containerPort: 3000}
      readinessProbe:
        tcpSocket: {port: http}
        periodSeconds: 2
      securityContext:
        runAsNonRoot: true
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: ["ALL"]}
        seccompProfile: {type: RuntimeDefault}
EOF
}

demo_backend() { # name, extra annotations (YAML map entries), kind (Deployment, DaemonSet, Pod)
  local name=$1 annotations=$2 kind=${3:-Deployment}
  if [ "$kind" = Pod ]; then
    printf 'apiVersion: v1\nkind: Pod\n'
    demo_pod "$name" "$annotations" "" | sed "s/^metadata:\$/metadata:\\n  name: $name/"
    return
  fi
  printf 'apiVersion: apps/v1\nkind: %s\nmetadata:\n  name: %s\nspec:\n' "$kind" "$name"
  if [ "$kind" = Deployment ]; then
    printf '  replicas: 3\n  strategy:\n    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}\n'
  fi
  printf '  selector:\n    matchLabels: {app: %s}\n  template:\n' "$name"
  demo_pod "$name" "$annotations" "    "
}

expected() {
  k -n "$DEMO" get pods -l 'app in (demo,demo-ds)' -o go-template='{{range .items}}{{if and (not .metadata.deletionTimestamp) .status.podIP}}{{.status.podIP}}:3000{{"\n"}}{{end}}{{end}}' | sort
}
listed() { c -sf --max-time 3 "http://127.0.0.1:$1/backends" | tr -d '[]" ' | tr ',' '\n' | sed '/^$/d' | sort; }
lb_pods() { k -n "$NS" get pods -l app.kubernetes.io/component=lb -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}'; }

# Every LB replica must route to exactly the running demo pods. Prints
# "<LBs> LBs x <pods> pods".
LB_COUNT=0
POD_COUNT=0
check_every_lb() {
  local want lb n=0
  want=$(expected)
  [ "$(echo "$want" | sed '/^$/d' | wc -l)" -ge 3 ] || die "too few demo pods: $want"
  for lb in $(lb_pods); do
    forward "pod/$lb" 8080
    same() { [ "$(listed "$FWD_PORT")" = "$(expected)" ]; }
    wait_for 90 "$lb to list every demo pod" same
    echo "$lb routes to: $(listed "$FWD_PORT" | tr '\n' ' ')"
    unforward
    n=$((n + 1))
  done
  LB_COUNT=$n
  POD_COUNT=$(expected | sed '/^$/d' | wc -l)
}

# A load generator pod: four request loops for $2 seconds; its last log
# line is "ok=N fail=M".
start_load() {
  local name=$1 seconds=$2
  # shellcheck disable=SC2016 # the script runs in the pod's shell
  k -n "$DEMO" run "$name" --image="$LOADGEN_IMAGE" --image-pull-policy=Never --restart=Never \
    --annotations=roster.dev/inject=false --command -- sh -c '
      end=$(( $(date +%s) + '"$seconds"' ))
      worker() {
        ok=0; bad=0
        while [ "$(date +%s)" -lt "$end" ]; do
          c=$(curl -s -o /dev/null -w "%{http_code}" --max-time 5 http://roster-lb.'"$NS"'.svc/ || true)
          if [ "$c" = 200 ]; then ok=$((ok + 1)); else bad=$((bad + 1)); echo "failed: $c"; fi
        done
        echo "$ok $bad" > "/tmp/worker-$1"
      }
      for i in 1 2 3 4; do worker "$i" & done
      wait
      cat /tmp/worker-* | awk "{ok += \$1; bad += \$2} END {print \"ok=\" ok \" fail=\" bad}"'
  running() { [ "$(k -n "$DEMO" get pod "$name" -o jsonpath='{.status.phase}')" = Running ]; }
  wait_for 60 "load generator $name to start" running
}

# Sets LOAD_FIGURE ("0 failed of N").
LOAD_FIGURE=""
finish_load() {
  local name=$1 seconds=$2 what=$3 result ok bad
  k -n "$DEMO" wait "pod/$name" --for=jsonpath='{.status.phase}'=Succeeded --timeout=$((seconds + 120))s >/dev/null
  result=$(k -n "$DEMO" logs "$name" | tail -1)
  echo "load ($what): $result"
  k -n "$DEMO" logs "$name" | grep '^failed' | head -5 || true
  ok=$(echo "$result" | sed -n 's/^ok=\([0-9]*\) fail=[0-9]*$/\1/p')
  bad=$(echo "$result" | sed -n 's/^ok=[0-9]* fail=\([0-9]*\)$/\1/p')
  if [ -z "$ok" ] || [ -z "$bad" ]; then die "the load generator printed no result ($what): $result"; fi
  LOAD_FIGURE="$bad failed of $((ok + bad))"
  [ "$bad" -eq 0 ] || die "requests failed while $what: $LOAD_FIGURE"
  [ "$ok" -gt 0 ] || die "the load generator sent nothing ($what)"
  k -n "$DEMO" delete pod "$name" --wait=false >/dev/null
}

# N requests to a URL from the cluster's network; prints the failures.
requests() {
  local n=$1 url=$2 fails=0 code
  for _ in $(seq 1 "$n"); do
    code=$(c -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)
    [ "$code" = 200 ] || fails=$((fails + 1))
  done
  echo "$fails"
}

# --- Prometheus (local provider): Debian's, scraping what the chart's
# ServiceMonitor (the LB Services' endpoints, port "control", /telemetry) and
# PodMonitor (pods labelled roster.dev/injected=true, port "vitals",
# /telemetry) select, plus the prometheus.io/* annotations the injector adds.
# Debian builds Prometheus without kubernetes_sd_configs ("field
# kubernetes_sd_configs not found in type config.ScrapeConfig"), so the
# same selection is read from the API here and handed over as file_sd
# targets. ----------------------------------------------------------------------
PROM_PORT=19090
prom_sd() { # writes $1/{lb,agents,annotated}.json from the API
  local dir=$1
  k get endpointslices -n "$NS" -l "app.kubernetes.io/instance=roster,app.kubernetes.io/component=lb" -o json >"$dir/endpoints.json"
  k get pods -A -o json >"$dir/pods.json"
  python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
eps = json.load(open(f"{d}/endpoints.json"))["items"]
pods = json.load(open(f"{d}/pods.json"))["items"]
lb = set()
for sl in eps:  # ServiceMonitor: the selected Services' endpoints, port "control"
    for port in sl.get("ports") or []:
        if port.get("name") != "control":
            continue
        for e in sl.get("endpoints") or []:
            for ip in e.get("addresses", []):
                lb.add((f"{ip}:{port['port']}", (e.get("targetRef") or {}).get("name", "")))
agents, annotated = set(), set()
for p in pods:
    meta, spec, status = p["metadata"], p["spec"], p.get("status", {})
    ip = status.get("podIP")
    if status.get("phase") != "Running" or not ip or meta.get("deletionTimestamp"):
        continue
    name = f"{meta['namespace']}/{meta['name']}"
    if (meta.get("labels") or {}).get("roster.dev/injected") == "true":  # PodMonitor
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for port in c.get("ports", []):
                if port.get("name") == "vitals":
                    agents.add((f"{ip}:{port['containerPort']}", name))
    ann = meta.get("annotations") or {}
    if ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port"):
        annotated.add((f"{ip}:{ann['prometheus.io/port']}", name, ann.get("prometheus.io/path", "/metrics")))
def write(fname, groups):
    json.dump(groups, open(f"{d}/{fname}.tmp", "w"))
    import os
    os.replace(f"{d}/{fname}.tmp", f"{d}/{fname}")
write("lb.json", [{"targets": [t], "labels": {"pod": n}} for t, n in sorted(lb)])
write("agents.json", [{"targets": [t], "labels": {"pod": n}} for t, n in sorted(agents)])
write("annotated.json", [{"targets": [t], "labels": {"pod": n, "__metrics_path__": path}} for t, n, path in sorted(annotated)])
print(len(lb), len(agents), len(annotated))
PY
}

start_prometheus() {
  local dir=$E2E_STATE/prometheus
  mkdir -p "$dir/data"
  prom_sd "$dir" >/dev/null
  cat >"$dir/prometheus.yml" <<EOF
global: {scrape_interval: 3s, scrape_timeout: 2s}
scrape_configs:
  - job_name: roster-lb
    metrics_path: /telemetry
    file_sd_configs: [{files: ["$dir/lb.json"], refresh_interval: 5s}]
  - job_name: roster-agents
    metrics_path: /telemetry
    file_sd_configs: [{files: ["$dir/agents.json"], refresh_interval: 5s}]
  - job_name: annotated-pods
    file_sd_configs: [{files: ["$dir/annotated.json"], refresh_interval: 5s}]
EOF
  promtool check config "$dir/prometheus.yml" >/dev/null || die "promtool check config: $(promtool check config "$dir/prometheus.yml" 2>&1 | tail -3)"
  setsid "${NS_EXEC[@]}" prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$E2E_STATE/logs/prometheus.log" 2>&1 </dev/null &
  echo $! >"$E2E_STATE/pids/prometheus.pid"
  PIDS+=("$!")
}

# "job up total": one line per job, from the targets API.
prom_targets() {
  c -sf --max-time 3 "http://127.0.0.1:$PROM_PORT/api/v1/targets?state=active" | python3 -c '
import json, sys, collections
t = collections.defaultdict(lambda: [0, 0])
for x in json.load(sys.stdin)["data"]["activeTargets"]:
    t[x["labels"]["job"]][1] += 1
    t[x["labels"]["job"]][0] += x["health"] == "up"
for job in ("roster-lb", "roster-agents", "annotated-pods"):
    print(job, *t[job])'
}

# --- the scenarios -------------------------------------------------------------

run_scenarios() {
  local t0

  scenario "helm install (defaults) + helm test"
  t0=$SECONDS
  h install roster charts/roster -n "$NS" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
    --set tests.image.registry="" --set tests.image.repository="${LOADGEN_IMAGE%:*}" \
    --set tests.image.tag="${LOADGEN_IMAGE##*:}" \
    --set injector.drainPeriod=10s --set config.lb.warmup=10s \
    --set config.health_check.interval=${INTERVAL}s --set config.health_check.unhealthy_threshold=$THRESHOLD \
    --wait --timeout 5m
  local installed=$((SECONDS - t0))
  ca_bundle() {
    [ -n "$(k get mutatingwebhookconfiguration "roster-injector-$NS" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]
  }
  wait_for 90 "the injector to write its caBundle" ca_bundle
  t0=$SECONDS
  h test roster -n "$NS" --timeout 3m
  pass "installed (--wait) in ${installed}s; helm test passed in $((SECONDS - t0))s"

  scenario "injection: annotation, namespace label, opt-out"
  k create namespace "$DEMO"
  # The demo backend embeds an agent library of its own; here the injected
  # sidecar does the announcing, so the embedded one gets a spare vitals
  # port and a black-hole LB address.
  # Both register under the LB's default service (chart defaults: unrouted
  # traffic and the flat /backends are lb.default_service's, "default";
  # unnamed, each would be its own service, demo and demo-ds).
  { demo_backend demo 'roster.dev/inject: "true", roster.dev/service: default'
    echo "---"
    demo_backend demo-ds 'roster.dev/inject: "true", roster.dev/app-port: "3000", roster.dev/service: default' DaemonSet
  } | k -n "$DEMO" apply -f -
  k create namespace "$OPTIN"
  k label namespace "$OPTIN" roster.dev/inject=enabled
  { demo_backend optin ''
    echo "---"
    demo_backend optout 'roster.dev/inject: "false"'
  } | k -n "$OPTIN" apply -f -
  k -n "$DEMO" rollout status deploy/demo --timeout=180s
  k -n "$DEMO" rollout status ds/demo-ds --timeout=180s
  k -n "$OPTIN" rollout status deploy/optin --timeout=180s
  k -n "$OPTIN" rollout status deploy/optout --timeout=180s
  sidecars() { # namespace, app: pods with the native sidecar
    k -n "$1" get pods -l "app=$2" -o jsonpath='{range .items[*]}{.spec.initContainers[?(@.name=="roster-agent")].restartPolicy}{"\n"}{end}' | grep -c Always || true
  }
  local annotated labelled optedout
  annotated=$(sidecars "$DEMO" demo)
  labelled=$(sidecars "$OPTIN" optin)
  optedout=$(sidecars "$OPTIN" optout)
  [ "$annotated" -eq 3 ] || die "expected 3 demo pods with the roster-agent native sidecar, got $annotated"
  [ "$labelled" -eq 3 ] || die "the namespace label did not opt its pods in ($labelled of 3)"
  [ "$optedout" -eq 0 ] || die "roster.dev/inject: \"false\" did not opt the pod out ($optedout of 3 injected)"
  local token interval
  token=$(k -n "$DEMO" get pods -l app=demo -o jsonpath='{.items[0].spec.volumes[?(@.name=="roster-agent-token")].projected.sources[0].serviceAccountToken.audience}')
  [ "$token" = roster ] || die "injected pods carry no projected token for kubernetes auth"
  interval=$(k -n "$DEMO" get pods -l app=demo -o jsonpath='{.items[0].spec.initContainers[?(@.name=="roster-agent")].env[?(@.name=="ROSTER_HEALTH_INTERVAL")].value}')
  [ "$interval" = "${INTERVAL}s" ] || die "agents got ROSTER_HEALTH_INTERVAL=$interval, not ${INTERVAL}s"
  pass "native sidecar: annotation 3/3, namespace label 3/3, opt-out 0/3; projected token, interval $interval"

  scenario "every LB lists every pod"
  check_every_lb
  pass "$LB_COUNT LBs x $POD_COUNT pods (TokenReview-checked registrations)"

  scenario "kubectl port-forward to /backends"
  forward svc/roster-lb-control 8080
  local listed_n
  listed_n=$(listed "$FWD_PORT" | wc -l)
  unforward
  [ "$listed_n" -eq "$POD_COUNT" ] || die "/backends through port-forward lists $listed_n, not $POD_COUNT"
  pass "svc/roster-lb-control:8080 /backends lists $listed_n of $POD_COUNT"

  scenario "traffic through the roster-lb Service"
  forward svc/roster-lb 80 /
  local fails
  fails=$(requests 50 "http://127.0.0.1:$FWD_PORT/")
  unforward
  [ "$fails" -eq 0 ] || die "$fails of 50 requests through roster-lb failed"
  pass "0 failed of 50 (port-forward to svc/roster-lb)"

  scenario "backends scale up/down and roll under load"
  start_load load-backends "$LOAD_SECONDS"
  sleep 5
  # Seconds from the new pod's creation (and from its Ready) to every LB routing to it.
  local before new created ready lb routable=""
  before=$(k -n "$DEMO" get pods -l app=demo -o name | sort)
  k -n "$DEMO" scale deploy/demo --replicas=4
  k -n "$DEMO" rollout status deploy/demo --timeout=180s
  new=$(comm -13 <(echo "$before") <(k -n "$DEMO" get pods -l app=demo -o name | sort) | sed -n 1p)
  [ -n "$new" ] || die "no new demo pod after scaling to 4"
  local ip
  ip=$(k -n "$DEMO" get "$new" -o jsonpath='{.status.podIP}'):3000
  created=$(date -d "$(k -n "$DEMO" get "$new" -o jsonpath='{.metadata.creationTimestamp}')" +%s)
  lb=$(lb_pods | sed -n 1p)
  forward "pod/$lb" 8080
  has_new() { listed "$FWD_PORT" | grep -qx "$ip"; }
  wait_for 60 "$ip to be routable" has_new
  routable=$(date +%s)
  unforward
  ready=$(date -d "$(k -n "$DEMO" get "$new" -o jsonpath='{.status.conditions[?(@.type=="Ready")].lastTransitionTime}')" +%s)
  local up_figure="routable $((routable - created))s after creation ($((routable - ready))s after Ready)"
  echo "scale up: $new $up_figure"
  k -n "$DEMO" scale deploy/demo --replicas=2
  k -n "$DEMO" rollout status deploy/demo --timeout=180s
  sleep 15
  k -n "$DEMO" rollout restart deploy/demo
  k -n "$DEMO" rollout status deploy/demo --timeout=300s
  finish_load load-backends "$LOAD_SECONDS" "scaling and rolling the backends"
  pass "$LOAD_FIGURE; new pod $up_figure"

  scenario "LBs roll under load"
  start_load load-lbs 90
  sleep 10
  k -n "$NS" rollout restart deploy/roster-lb
  k -n "$NS" rollout status deploy/roster-lb --timeout=300s
  finish_load load-lbs 90 "rolling the LBs"
  check_every_lb
  pass "$LOAD_FIGURE; then $LB_COUNT LBs x $POD_COUNT pods"

  scenario "force-deleted pod leaves /backends"
  local victim start limit=$((INTERVAL * THRESHOLD + INTERVAL)) took
  victim=$(k -n "$DEMO" get pods -l app=demo -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}' | sed -n 1p)
  ip=$(k -n "$DEMO" get pod "$victim" -o jsonpath='{.status.podIP}'):3000
  lb=$(lb_pods | sed -n 1p)
  forward "pod/$lb" 8080
  listed "$FWD_PORT" | grep -qx "$ip" || die "$ip not listed before the kill"
  start=$(date +%s.%N)
  k -n "$DEMO" delete pod "$victim" --grace-period=0 --force >/dev/null 2>&1
  gone() { ! listed "$FWD_PORT" | grep -qx "$ip"; }
  wait_for $((limit + 1)) "$ip to leave /backends (limit ${limit}s)" gone
  took=$(echo "$(date +%s.%N) $start" | awk '{printf "%.1f", $1 - $2}')
  unforward
  pass "left /backends after ${took}s (interval ${INTERVAL}s x threshold $THRESHOLD, limit ${limit}s)"

  scenario "injector down: pods still start"
  k -n "$NS" scale deploy/roster-injector --replicas=0
  injector_gone() { [ -z "$(k -n "$NS" get pods -l app.kubernetes.io/component=injector -o name)" ]; }
  wait_for 120 "the injector pods to go" injector_gone
  t0=$SECONDS
  demo_backend no-injector 'roster.dev/inject: "true"' Pod | k -n "$DEMO" apply -f -
  k -n "$DEMO" wait pod/no-injector --for=condition=Ready --timeout=120s
  local started=$((SECONDS - t0))
  [ -z "$(k -n "$DEMO" get pod no-injector -o jsonpath='{.spec.initContainers[*].name}')" ] \
    || die "a pod created while the injector was down has initContainers"
  k -n "$DEMO" delete pod no-injector --wait=false >/dev/null
  k -n "$NS" scale deploy/roster-injector --replicas=2
  k -n "$NS" rollout status deploy/roster-injector --timeout=180s
  pass "Ready ${started}s after create, uninjected (failurePolicy Ignore)"

  if [ "$PROVIDER" = local ]; then
    scenario "Prometheus scrapes every LB and agent"
    start_prometheus
    local want_agents lbs
    lbs=$(lb_pods | wc -l)
    want_agents=$(k get pods -A -l roster.dev/injected=true --field-selector=status.phase=Running -o name | wc -l)
    all_up() {
      prom_targets >"$E2E_STATE/prometheus/targets"
      awk -v l="$lbs" -v a="$want_agents" '
        $1 == "roster-lb" && $2 == l && $3 == l {ok++}
        $1 == "roster-agents" && $2 == a && $3 == a {ok++}
        $1 == "annotated-pods" && $2 == a && $3 == a {ok++}
        END {exit ok == 3 ? 0 : 1}' "$E2E_STATE/prometheus/targets"
    }
    if ! wait_for_quiet 90 all_up; then
      cat "$E2E_STATE/prometheus/targets" >&2 || true
      die "Prometheus targets not all up (want $lbs LBs, $want_agents agents): $(tr '\n' ' ' <"$E2E_STATE/prometheus/targets")"
    fi
    # Every exposition, as scraped, through promtool's linter.
    local target bad=0 n=0 out
    for target in $(c -sf "http://127.0.0.1:$PROM_PORT/api/v1/targets?state=active" | python3 -c '
import json, sys
for x in json.load(sys.stdin)["data"]["activeTargets"]:
    print(x["scrapeUrl"])' | sort -u); do
      n=$((n + 1))
      if ! out=$(c -sf --max-time 3 "$target" | promtool check metrics 2>&1); then
        bad=$((bad + 1))
        echo "promtool check metrics $target: $out" >&2
      fi
    done
    [ "$bad" -eq 0 ] || die "promtool check metrics: $bad of $n expositions have problems"
    pass "up: $lbs/$lbs LBs, $want_agents/$want_agents agents (PodMonitor and annotations); promtool clean on $n"
  fi

  scenario "helm upgrade with a changed config"
  local before_sum after_sum
  t0=$SECONDS
  before_sum=$(k -n "$NS" get deploy/roster-lb -o jsonpath='{.spec.template.metadata.annotations.checksum/config}')
  h upgrade roster charts/roster -n "$NS" --reuse-values --set config.health_check.interval=3s --wait --timeout 5m
  after_sum=$(k -n "$NS" get deploy/roster-lb -o jsonpath='{.spec.template.metadata.annotations.checksum/config}')
  [ "$before_sum" != "$after_sum" ] || die "the LB pod template did not change with the config"
  k -n "$NS" rollout status deploy/roster-lb --timeout=300s
  k -n "$NS" rollout status deploy/roster-injector --timeout=300s
  k -n "$DEMO" rollout restart deploy/demo
  k -n "$DEMO" rollout status deploy/demo --timeout=300s
  # Every running demo pod (not the old ones still draining).
  interval=$(k -n "$DEMO" get pods -l app=demo -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{range .spec.initContainers}}{{if eq .name "roster-agent"}}{{range .env}}{{if eq .name "ROSTER_HEALTH_INTERVAL"}}{{.value}}{{"\n"}}{{end}}{{end}}{{end}}{{end}}{{end}}{{end}}' | sort -u | paste -sd' ' -)
  [ "$interval" = 3s ] || die "after the upgrade new agents got ROSTER_HEALTH_INTERVAL=$interval, not 3s"
  check_every_lb
  pass "LBs rolled with the new config, new agents interval 3s, $LB_COUNT LBs x $POD_COUNT pods; $((SECONDS - t0))s"

  scenario "DaemonSet LB with hostPort"
  h upgrade roster charts/roster -n "$NS" --reuse-values --set lb.kind=DaemonSet --set lb.hostPort=$HOSTPORT --wait --timeout 5m
  k -n "$NS" rollout status ds/roster-lb --timeout=300s
  check_every_lb
  routed() { [ "$(c -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$NODE_IP:$HOSTPORT/")" = 200 ]; }
  wait_for 60 "traffic on $NODE_IP:$HOSTPORT" routed
  fails=$(requests 50 "http://$NODE_IP:$HOSTPORT/")
  [ "$fails" -eq 0 ] || die "$fails of 50 requests to the hostPort failed"
  pass "0 failed of 50 to node $NODE_IP:$HOSTPORT; $LB_COUNT LB(s) x $POD_COUNT pods"

  scenario "DaemonSet LB with hostNetwork"
  h upgrade roster charts/roster -n "$NS" --reuse-values --set lb.hostPort=0 --set lb.hostNetwork=true --wait --timeout 5m
  k -n "$NS" rollout status ds/roster-lb --timeout=300s
  [ "$(k -n "$NS" get pod "$(lb_pods | sed -n 1p)" -o jsonpath='{.spec.hostNetwork}')" = true ] \
    || die "the LB pod is not on the host network"
  check_every_lb
  routed_hn() { [ "$(c -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$NODE_IP:8000/")" = 200 ]; }
  wait_for 60 "traffic on $NODE_IP:8000" routed_hn
  fails=$(requests 50 "http://$NODE_IP:8000/")
  [ "$fails" -eq 0 ] || die "$fails of 50 requests to the host-network LB failed"
  pass "0 failed of 50 to node $NODE_IP:8000; $LB_COUNT LB(s) x $POD_COUNT pods"

  scenario "helm uninstall leaves nothing behind"
  t0=$SECONDS
  h uninstall roster -n "$NS" --wait --timeout 3m
  local left kinds uninstalled=$((SECONDS - t0))
  kinds=$(k api-resources --verbs=list -o name | grep -v -E '^(events|events.events.k8s.io)$' | paste -sd, -)
  # What the release made, in every namespace; its pods go within their
  # grace period (the garbage collector deletes them after the workloads).
  leftovers() {
    left=$(k get "$kinds" -A -l app.kubernetes.io/instance=roster -o name 2>/dev/null) || { left="(kubectl get failed)"; return; }
    left+=$(k get mutatingwebhookconfiguration -o name | grep roster || true)
    left+=$(k -n "$NS" get all,cm,secret,sa,role,rolebinding,networkpolicy,pdb -o name | grep -v -E '^(configmap/kube-root-ca.crt|serviceaccount/default)$' || true)
  }
  nothing_left() { leftovers; [ -z "$left" ]; }
  if ! wait_for_quiet 120 nothing_left; then
    leftovers
    die "left behind 120s after helm uninstall: $(echo "$left" | tr '\n' ' ')"
  fi
  pass "uninstall ${uninstalled}s; nothing of the release left (any namespace, webhook, pods) after $((SECONDS - t0))s"
}

# Poll without dying; returns 1 on time-out.
wait_for_quiet() {
  local limit=$1 deadline
  shift
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
}

# --- providers -----------------------------------------------------------------

run_local() {
  [ "$(id -u)" = 0 ] || { echo "e2e: the local provider needs root (network namespace, containerd, kubelet)" >&2; exit 2; }
  if [ "${E2E_NO_CARGO:-0}" != 1 ]; then
    log "release binaries (cargo build --release)"
    flock "$LOCK" "${CARGO:-cargo}" build --release --locked --bin roster --bin roster-agent
  fi
  CLUSTER=local
  local t0=$SECONDS
  e2e/cluster.sh up
  local line
  while IFS= read -r line; do export "${line?}"; done < <(e2e/cluster.sh env)
  NS_EXEC=(nsenter --net="/run/netns/$E2E_NETNS")
  LOADGEN_IMAGE=$CURL_IMAGE
  NODE_IP=$E2E_NODE_IP
  CLUSTER=${K8S_VERSION#v}
  local up=$((SECONDS - t0))
  SCENARIO="cluster up (Kubernetes $K8S_VERSION)"
  SCENARIO_START=$t0
  pass "etcd, apiserver, controller-manager, scheduler, containerd, kubelet, kube-proxy, CoreDNS; ${up}s"
  echo "kubectl: $("$KUBECTL" version --client 2>/dev/null | sed -n 1p); helm: $("$HELM" version --short 2>/dev/null)"
  run_scenarios
  stop_pids
  cluster_down
  echo "Kubernetes $K8S_VERSION: PASSED"
}

run_kind() {
  read -r -a VERSIONS <<<"${E2E_VERSIONS:-1.29 1.30 1.36}"
  # Also the `helm test` pod's image (the chart's tests.image default).
  LOADGEN_IMAGE=${LOADGEN_IMAGE:-curlimages/curl:8.11.1}
  local missing=() tool v
  for tool in docker kind helm kubectl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "e2e: SKIPPED — missing: ${missing[*]} (E2E_PROVIDER=kind needs docker, kind, helm and kubectl)"
    exit 0
  fi
  if ! docker info >/dev/null 2>&1; then
    echo "e2e: SKIPPED — docker is installed but its engine is not reachable"
    exit 0
  fi
  for v in "${VERSIONS[@]}"; do
    [ -n "${NODE_IMAGES[$v]:-}" ] || { echo "e2e: no pinned kind node image for Kubernetes $v" >&2; exit 2; }
  done
  log "image $IMAGE"
  docker build -t "$IMAGE" .
  docker pull -q "$LOADGEN_IMAGE" >/dev/null
  for v in "${VERSIONS[@]}"; do
    CLUSTER="roster-e2e-${v//./-}"
    KCTX=(--context "kind-$CLUSTER")
    HCTX=(--kube-context "kind-$CLUSTER")
    log "kind cluster $CLUSTER (${NODE_IMAGES[$v]})"
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    kind create cluster --config kind/cluster.yaml --name "$CLUSTER" --image "${NODE_IMAGES[$v]}" --wait 120s
    kind load docker-image "$IMAGE" "$LOADGEN_IMAGE" --name "$CLUSTER"
    NODE_IP=$(k get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')
    run_scenarios
    stop_pids
    cluster_down
    echo "Kubernetes $v: PASSED"
  done
}

case $PROVIDER in
  local) run_local ;;
  kind) run_kind ;;
  *) echo "e2e: E2E_PROVIDER is local or kind, not $PROVIDER" >&2; exit 2 ;;
esac
echo
echo "e2e: PASSED ($PROVIDER)"
