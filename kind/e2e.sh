#!/usr/bin/env bash
# End to end on kind (`make e2e`): build and load the image, `helm install`
# the chart, deploy an annotated demo workload (a Deployment and a
# DaemonSet of `roster demo-backend`), check that every LB replica lists
# every pod, send traffic through roster-lb, then scale down and roll the
# Deployment under load and require zero failed requests; uninstall.
#
# Needs docker, kind, helm and kubectl; skips (exit 0) when one is missing.
# Not part of `make test`.
#
#   IMAGE=roster:dev kind/e2e.sh     image tag to build and load
#   E2E_KEEP=1 kind/e2e.sh           keep the cluster afterwards
#   LOADGEN_IMAGE=...                the in-cluster load generator (curl)
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=roster-e2e
IMAGE=${IMAGE:-roster:e2e}
LOADGEN_IMAGE=${LOADGEN_IMAGE:-curlimages/curl:8.11.1}
NS=roster
DEMO=roster-e2e-demo
CTX=kind-$CLUSTER
LOAD_SECONDS=${LOAD_SECONDS:-150}

missing=()
for tool in docker kind helm kubectl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "e2e: SKIPPED — missing: ${missing[*]} (needs docker, kind, helm and kubectl)"
  exit 0
fi
if ! docker info >/dev/null 2>&1; then
  echo "e2e: SKIPPED — docker is installed but its engine is not reachable"
  exit 0
fi

k() { kubectl --context "$CTX" "$@"; }
log() { printf '\n=== %s\n' "$*"; }
die() { echo "e2e: FAILED — $*" >&2; exit 1; }

# Every background process this script starts, stopped on exit by PID.
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]:-}"; do
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  done
  if [ $rc -ne 0 ] && kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    echo "--- diagnostics"
    k get pods -A -o wide || true
    k -n "$NS" get events --sort-by=.lastTimestamp | tail -30 || true
    k -n "$DEMO" get events --sort-by=.lastTimestamp | tail -30 || true
    k -n "$NS" logs -l app.kubernetes.io/component=injector --tail=50 || true
    k -n "$NS" logs -l app.kubernetes.io/component=lb --tail=50 || true
    k -n "$DEMO" logs -l app=demo -c roster-agent --tail=30 || true
  fi
  if [ "${E2E_KEEP:-0}" = 1 ]; then
    echo "cluster kept: kubectl --context $CTX ..."
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit $rc
}
trap cleanup EXIT

# Poll `$@` until it succeeds, at most $1 seconds.
wait_for() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${limit}s waiting for $what"
    sleep 2
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }

# Port-forward in the background; prints the local port.
forward() {
  local target=$1 remote=$2 port
  port=$(free_port)
  k -n "$NS" port-forward "$target" "$port:$remote" >/dev/null 2>&1 &
  PIDS+=($!)
  wait_for 20 "port-forward to $target" curl -sf -o /dev/null "http://127.0.0.1:$port/healthz"
  echo "$port"
}

log "kind cluster $CLUSTER"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
kind create cluster --config kind/cluster.yaml --name "$CLUSTER" --wait 120s

log "image $IMAGE"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"
docker pull -q "$LOADGEN_IMAGE" >/dev/null
kind load docker-image "$LOADGEN_IMAGE" --name "$CLUSTER"

log "helm install roster"
helm --kube-context "$CTX" install roster charts/roster -n "$NS" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set injector.drainPeriod=10s --set config.lb.warmup=10s \
  --wait --timeout 5m
helm --kube-context "$CTX" status roster -n "$NS" >/dev/null

ca_bundle() {
  [ -n "$(k get mutatingwebhookconfiguration roster-injector-$NS -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]
}
wait_for 90 "the injector to write its caBundle" ca_bundle

log "demo workload (annotated Deployment and DaemonSet of roster demo-backend)"
k create namespace "$DEMO"
# The demo backend embeds an agent library of its own; here the injected
# sidecar does the announcing, so the embedded one gets a spare vitals port
# and a black-hole LB address.
k -n "$DEMO" apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo
spec:
  replicas: 3
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  selector:
    matchLabels: {app: demo}
  template:
    metadata:
      labels: {app: demo}
      annotations:
        roster.dev/inject: "true"
    spec:
      containers:
        - name: web
          image: $IMAGE
          imagePullPolicy: Never
          args: ["demo-backend", "--listen", "0.0.0.0:3000", "--metrics-port", "9091", "--discovery-lb", "127.0.0.1:9"]
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
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: demo-ds
spec:
  selector:
    matchLabels: {app: demo-ds}
  template:
    metadata:
      labels: {app: demo-ds}
      annotations:
        roster.dev/inject: "true"
        roster.dev/app-port: "3000"
    spec:
      containers:
        - name: web
          image: $IMAGE
          imagePullPolicy: Never
          args: ["demo-backend", "--listen", "0.0.0.0:3000", "--metrics-port", "9091", "--discovery-lb", "127.0.0.1:9"]
          securityContext:
            runAsNonRoot: true
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: ["ALL"]}
            seccompProfile: {type: RuntimeDefault}
EOF
k -n "$DEMO" rollout status deploy/demo --timeout=180s
k -n "$DEMO" rollout status ds/demo-ds --timeout=180s

injected=$(k -n "$DEMO" get pods -l app=demo -o jsonpath='{range .items[*]}{.spec.initContainers[?(@.name=="roster-agent")].restartPolicy}{"\n"}{end}' | grep -c Always || true)
[ "$injected" -eq 3 ] || die "expected 3 demo pods with the roster-agent native sidecar, found $injected"
echo "roster-agent injected as a native sidecar into every demo pod"

expected() {
  k -n "$DEMO" get pods -l 'app in (demo,demo-ds)' -o go-template='{{range .items}}{{if and (not .metadata.deletionTimestamp) .status.podIP}}{{.status.podIP}}:3000{{"\n"}}{{end}}{{end}}' | sort
}
listed() { curl -sf "http://127.0.0.1:$1/backends" | tr -d '[]" ' | tr ',' '\n' | sed '/^$/d' | sort; }
lb_pods() { k -n "$NS" get pods -l app.kubernetes.io/component=lb -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }

# Every LB replica must route to exactly the running demo pods.
check_every_lb() {
  local want lb port
  want=$(expected)
  [ "$(echo "$want" | sed '/^$/d' | wc -l)" -ge 3 ] || die "too few demo pods: $want"
  for lb in $(lb_pods); do
    port=$(forward "pod/$lb" 8080)
    same() { [ "$(listed "$port")" = "$(expected)" ]; }
    wait_for 90 "$lb to list every demo pod" same
    echo "$lb routes to: $(listed "$port" | tr '\n' ' ')"
  done
}

log "every LB lists every pod"
check_every_lb

log "traffic through roster-lb"
port=$(free_port)
k -n "$NS" port-forward svc/roster-lb "$port:80" >/dev/null 2>&1 &
PIDS+=($!)
wait_for 20 "port-forward to svc/roster-lb" curl -s -o /dev/null "http://127.0.0.1:$port/"
fails=0
for _ in $(seq 1 50); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port/" || true)
  [ "$code" = 200 ] || fails=$((fails + 1))
done
[ $fails -eq 0 ] || die "$fails of 50 requests through roster-lb failed"
echo "50/50 requests answered 200"

log "scale down and roll the Deployment under load"
# Four request loops inside the cluster, for LOAD_SECONDS; one summary line.
# shellcheck disable=SC2016 # the script runs in the pod's shell
k -n "$DEMO" run loadgen --image="$LOADGEN_IMAGE" --image-pull-policy=Never --restart=Never \
  --command -- sh -c '
    end=$(( $(date +%s) + '"$LOAD_SECONDS"' ))
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
wait_for 60 "the load generator to start" sh -c "[ \"\$(kubectl --context $CTX -n $DEMO get pod loadgen -o jsonpath='{.status.phase}')\" = Running ]"
sleep 10
k -n "$DEMO" scale deploy/demo --replicas=2
k -n "$DEMO" rollout status deploy/demo --timeout=180s
sleep 20
k -n "$DEMO" rollout restart deploy/demo
k -n "$DEMO" rollout status deploy/demo --timeout=300s
k -n "$DEMO" wait pod/loadgen --for=jsonpath='{.status.phase}'=Succeeded --timeout=$((LOAD_SECONDS + 120))s
result=$(k -n "$DEMO" logs loadgen | tail -1)
echo "load: $result"
k -n "$DEMO" logs loadgen | grep '^failed' | head -5 || true
case "$result" in
  ok=*" fail=0") ;;
  *) die "requests failed while scaling and rolling: $result" ;;
esac
[ "${result#ok=}" != "0 fail=0" ] || die "the load generator sent nothing"

log "after the roll, every LB lists exactly the new pods"
check_every_lb

log "helm uninstall"
helm --kube-context "$CTX" uninstall roster -n "$NS" --wait --timeout 3m
if k get mutatingwebhookconfiguration "roster-injector-$NS" >/dev/null 2>&1; then
  die "the MutatingWebhookConfiguration outlived the release"
fi
echo
echo "e2e: PASSED"
