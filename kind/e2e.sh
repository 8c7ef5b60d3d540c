#!/usr/bin/env bash
# End to end on kind (`make e2e`), once per Kubernetes version of the
# matrix (kind node images pinned by digest below). Per version:
#   - build and load the image, `helm install` the chart with its defaults
#     (kubernetes auth: agents register with projected ServiceAccount
#     tokens the LBs check by TokenReview), `helm test`;
#   - an annotated Deployment and DaemonSet, and a namespace opted in with
#     the label roster.dev/inject=enabled (one pod opting out);
#   - every LB lists every pod; traffic through roster-lb;
#   - scale down and roll the backends under load: 0 failed requests;
#   - roll the LBs themselves under load: 0 failed requests;
#   - a force-deleted pod leaves /backends within interval x threshold;
#   - the injector down: pods still start (failurePolicy Ignore), uninjected;
#   - `helm upgrade` with a changed config: the LBs roll, new agents get it;
#   - `helm uninstall` removes the webhook.
#
# Needs docker, kind, helm and kubectl; skips (exit 0) when one is missing.
# Not part of `make test`.
#
#   IMAGE=roster:dev kind/e2e.sh            image tag to build and load
#   E2E_VERSIONS="1.30" kind/e2e.sh         a subset of the matrix
#   E2E_KEEP=1 kind/e2e.sh                  keep the (last) cluster
#   LOADGEN_IMAGE=...                       the in-cluster load generator (curl)
set -euo pipefail
cd "$(dirname "$0")/.."

# The supported range's edges and the newest kind node image: 1.29 (exec
# preStop `roster sleep`, no sleep action), 1.30 (sleep action on), newest.
# Digests from the kind release notes (https://github.com/kubernetes-sigs/kind/releases).
declare -A NODE_IMAGES=(
  [1.29]="kindest/node:v1.29.14@sha256:8703bd94ee24e51b778d5556ae310c6c0fa67d761fae6379c8e0bb480e6fea29"
  [1.30]="kindest/node:v1.30.13@sha256:397209b3d947d154f6641f2d0ce8d473732bd91c87d9575ade99049aa33cd648"
  [1.36]="kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
)
read -r -a VERSIONS <<<"${E2E_VERSIONS:-1.29 1.30 1.36}"

IMAGE=${IMAGE:-roster:e2e}
# Also the `helm test` pod's image (the chart's tests.image default).
LOADGEN_IMAGE=${LOADGEN_IMAGE:-curlimages/curl:8.11.1}
NS=roster
DEMO=roster-e2e-demo
OPTIN=roster-e2e-optin
LOAD_SECONDS=${LOAD_SECONDS:-150}
# The LBs check every 2s and drop a backend after 2 failures.
INTERVAL=2
THRESHOLD=2
CLUSTER=""
CTX=""

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
for v in "${VERSIONS[@]}"; do
  [ -n "${NODE_IMAGES[$v]:-}" ] || { echo "e2e: no pinned kind node image for Kubernetes $v" >&2; exit 2; }
done

k() { kubectl --context "$CTX" "$@"; }
h() { helm --kube-context "$CTX" "$@"; }
log() { printf '\n=== [%s] %s\n' "${CLUSTER#roster-e2e-}" "$*"; }
die() { echo "e2e: FAILED [${CLUSTER#roster-e2e-}] — $*" >&2; exit 1; }

# Every background process this script starts, stopped by PID.
PIDS=()
stop_pids() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  PIDS=()
}
cleanup() {
  local rc=$?
  stop_pids
  if [ -n "$CLUSTER" ] && kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    if [ $rc -ne 0 ]; then
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
  fi
  exit $rc
}
trap cleanup EXIT

# Poll `$@` until it succeeds, at most $1 seconds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${limit}s waiting for $what"
    sleep 1
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
  wait_for 20 "port-forward to $target" curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$FWD_PORT$path"
}
unforward() { kill "$FWD_PID" 2>/dev/null || true; }

demo_backend() { # name, extra annotations (YAML map lines), kind
  local name=$1 annotations=$2 kind=${3:-Deployment} replicas=""
  [ "$kind" = Deployment ] && replicas="replicas: 3
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}"
  cat <<EOF
apiVersion: apps/v1
kind: $kind
metadata:
  name: $name
spec:
  $replicas
  selector:
    matchLabels: {app: $name}
  template:
    metadata:
      labels: {app: $name}
      annotations: {$annotations}
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
EOF
}

expected() {
  k -n "$DEMO" get pods -l 'app in (demo,demo-ds)' -o go-template='{{range .items}}{{if and (not .metadata.deletionTimestamp) .status.podIP}}{{.status.podIP}}:3000{{"\n"}}{{end}}{{end}}' | sort
}
listed() { curl -sf --max-time 3 "http://127.0.0.1:$1/backends" | tr -d '[]" ' | tr ',' '\n' | sed '/^$/d' | sort; }
lb_pods() { k -n "$NS" get pods -l app.kubernetes.io/component=lb -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }

# Every LB replica must route to exactly the running demo pods.
check_every_lb() {
  local want lb
  want=$(expected)
  [ "$(echo "$want" | sed '/^$/d' | wc -l)" -ge 3 ] || die "too few demo pods: $want"
  for lb in $(lb_pods); do
    forward "pod/$lb" 8080
    same() { [ "$(listed "$FWD_PORT")" = "$(expected)" ]; }
    wait_for 90 "$lb to list every demo pod" same
    echo "$lb routes to: $(listed "$FWD_PORT" | tr '\n' ' ')"
    unforward
  done
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

finish_load() {
  local name=$1 seconds=$2 what=$3 result
  k -n "$DEMO" wait "pod/$name" --for=jsonpath='{.status.phase}'=Succeeded --timeout=$((seconds + 120))s
  result=$(k -n "$DEMO" logs "$name" | tail -1)
  echo "load ($what): $result"
  k -n "$DEMO" logs "$name" | grep '^failed' | head -5 || true
  case "$result" in
    ok=*" fail=0") ;;
    *) die "requests failed while $what: $result" ;;
  esac
  [ "${result#ok=}" != "0 fail=0" ] || die "the load generator sent nothing ($what)"
  k -n "$DEMO" delete pod "$name" --wait=false >/dev/null
}

run_version() {
  local version=$1 node_image=${NODE_IMAGES[$1]}
  CLUSTER="roster-e2e-${version//./-}"
  CTX="kind-$CLUSTER"

  log "kind cluster $CLUSTER ($node_image)"
  kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  kind create cluster --config kind/cluster.yaml --name "$CLUSTER" --image "$node_image" --wait 120s
  kind load docker-image "$IMAGE" "$LOADGEN_IMAGE" --name "$CLUSTER"

  log "helm install roster (defaults: kubernetes auth, NetworkPolicy)"
  h install roster charts/roster -n "$NS" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
    --set tests.image.registry="" --set tests.image.repository="${LOADGEN_IMAGE%:*}" \
    --set tests.image.tag="${LOADGEN_IMAGE##*:}" \
    --set injector.drainPeriod=10s --set config.lb.warmup=10s \
    --set config.health_check.interval=${INTERVAL}s --set config.health_check.unhealthy_threshold=$THRESHOLD \
    --wait --timeout 5m
  ca_bundle() {
    [ -n "$(k get mutatingwebhookconfiguration "roster-injector-$NS" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]
  }
  wait_for 90 "the injector to write its caBundle" ca_bundle
  log "helm test (/readyz and /backends)"
  h test roster -n "$NS" --timeout 3m

  log "annotated Deployment and DaemonSet; a namespace opted in by label"
  k create namespace "$DEMO"
  # The demo backend embeds an agent library of its own; here the injected
  # sidecar does the announcing, so the embedded one gets a spare vitals
  # port and a black-hole LB address.
  { demo_backend demo 'roster.dev/inject: "true"'
    echo "---"
    demo_backend demo-ds 'roster.dev/inject: "true", roster.dev/app-port: "3000"' DaemonSet
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
  [ "$(sidecars "$DEMO" demo)" -eq 3 ] || die "expected 3 demo pods with the roster-agent native sidecar"
  [ "$(sidecars "$OPTIN" optin)" -eq 3 ] || die "the namespace label did not opt its pods in"
  [ "$(sidecars "$OPTIN" optout)" -eq 0 ] || die "roster.dev/inject: \"false\" did not opt the pod out"
  token=$(k -n "$DEMO" get pods -l app=demo -o jsonpath='{.items[0].spec.volumes[?(@.name=="roster-agent-token")].projected.sources[0].serviceAccountToken.audience}')
  [ "$token" = roster ] || die "injected pods carry no projected token for kubernetes auth"
  interval=$(k -n "$DEMO" get pods -l app=demo -o jsonpath='{.items[0].spec.initContainers[?(@.name=="roster-agent")].env[?(@.name=="ROSTER_HEALTH_INTERVAL")].value}')
  [ "$interval" = "${INTERVAL}s" ] || die "agents got ROSTER_HEALTH_INTERVAL=$interval, not ${INTERVAL}s"
  echo "sidecars injected (annotation and namespace label), opt-out respected, projected tokens, interval ${interval}"

  log "every LB lists every pod (registered with TokenReview-checked tokens)"
  check_every_lb

  log "traffic through roster-lb"
  forward svc/roster-lb 80 /
  local fails=0 code
  for _ in $(seq 1 50); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$FWD_PORT/" || true)
    [ "$code" = 200 ] || fails=$((fails + 1))
  done
  unforward
  [ $fails -eq 0 ] || die "$fails of 50 requests through roster-lb failed"
  echo "50/50 requests answered 200"

  log "scale down and roll the backends under load"
  start_load load-backends "$LOAD_SECONDS"
  sleep 10
  k -n "$DEMO" scale deploy/demo --replicas=2
  k -n "$DEMO" rollout status deploy/demo --timeout=180s
  sleep 20
  k -n "$DEMO" rollout restart deploy/demo
  k -n "$DEMO" rollout status deploy/demo --timeout=300s
  finish_load load-backends "$LOAD_SECONDS" "scaling and rolling the backends"

  log "roll the LBs themselves under load"
  start_load load-lbs 90
  sleep 10
  k -n "$NS" rollout restart deploy/roster-lb
  k -n "$NS" rollout status deploy/roster-lb --timeout=300s
  finish_load load-lbs 90 "rolling the LBs"
  check_every_lb

  log "a force-deleted pod leaves /backends within interval x threshold"
  local victim ip lb start limit=$(( INTERVAL * THRESHOLD + INTERVAL ))
  victim=$(k -n "$DEMO" get pods -l app=demo -o jsonpath='{.items[0].metadata.name}')
  ip=$(k -n "$DEMO" get pod "$victim" -o jsonpath='{.status.podIP}'):3000
  lb=$(lb_pods | head -1)
  forward "pod/$lb" 8080
  listed "$FWD_PORT" | grep -qx "$ip" || die "$ip not listed before the kill"
  start=$SECONDS
  k -n "$DEMO" delete pod "$victim" --grace-period=0 --force >/dev/null 2>&1
  gone() { ! listed "$FWD_PORT" | grep -qx "$ip"; }
  wait_for $((limit + 1)) "$ip to leave /backends (limit ${limit}s)" gone
  echo "$ip left /backends after $((SECONDS - start))s (limit ${limit}s)"
  unforward

  log "the injector down: pods still start, without the agent"
  k -n "$NS" scale deploy/roster-injector --replicas=0
  injector_gone() { [ -z "$(k -n "$NS" get pods -l app.kubernetes.io/component=injector -o name)" ]; }
  wait_for 120 "the injector pods to go" injector_gone
  k -n "$DEMO" run no-injector --image="$IMAGE" --image-pull-policy=Never --restart=Never \
    --annotations=roster.dev/inject=true --port 3000 -- demo-backend --listen 0.0.0.0:3000 --metrics-port 9091 --discovery-lb 127.0.0.1:9
  k -n "$DEMO" wait pod/no-injector --for=condition=Ready --timeout=120s
  [ -z "$(k -n "$DEMO" get pod no-injector -o jsonpath='{.spec.initContainers[*].name}')" ] \
    || die "a pod created while the injector was down has initContainers"
  k -n "$DEMO" delete pod no-injector --wait=false >/dev/null
  k -n "$NS" scale deploy/roster-injector --replicas=2
  k -n "$NS" rollout status deploy/roster-injector --timeout=180s
  echo "pod created with the injector down: started, uninjected (failurePolicy Ignore)"

  log "helm upgrade with a changed config"
  local before after
  before=$(k -n "$NS" get deploy/roster-lb -o jsonpath='{.spec.template.metadata.annotations.checksum/config}')
  h upgrade roster charts/roster -n "$NS" --reuse-values --set config.health_check.interval=3s --wait --timeout 5m
  after=$(k -n "$NS" get deploy/roster-lb -o jsonpath='{.spec.template.metadata.annotations.checksum/config}')
  [ "$before" != "$after" ] || die "the LB pod template did not change with the config"
  k -n "$NS" rollout status deploy/roster-lb --timeout=300s
  k -n "$NS" rollout status deploy/roster-injector --timeout=300s
  k -n "$DEMO" rollout restart deploy/demo
  k -n "$DEMO" rollout status deploy/demo --timeout=300s
  interval=$(k -n "$DEMO" get pods -l app=demo -o jsonpath='{.items[0].spec.initContainers[?(@.name=="roster-agent")].env[?(@.name=="ROSTER_HEALTH_INTERVAL")].value}')
  [ "$interval" = 3s ] || die "after the upgrade new agents got ROSTER_HEALTH_INTERVAL=$interval, not 3s"
  check_every_lb
  echo "upgrade: LBs rolled with the new config, new agents use interval 3s"

  log "helm uninstall"
  h uninstall roster -n "$NS" --wait --timeout 3m
  if k get mutatingwebhookconfiguration "roster-injector-$NS" >/dev/null 2>&1; then
    die "the MutatingWebhookConfiguration outlived the release"
  fi
  stop_pids
  if [ "${E2E_KEEP:-0}" != 1 ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  echo "Kubernetes $version: PASSED"
}

log "image $IMAGE"
docker build -t "$IMAGE" .
docker pull -q "$LOADGEN_IMAGE" >/dev/null

for v in "${VERSIONS[@]}"; do
  run_version "$v"
done
echo
echo "e2e: PASSED on Kubernetes ${VERSIONS[*]}"
