#!/usr/bin/env bash
# A real single-node Kubernetes of host processes, for `make e2e` on a machine
# with no docker engine and no registry: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd + runc + the CNI
# bridge/portmap plugins, kubelet (cgroupfs driver), kube-proxy (iptables)
# and CoreDNS, every image built here (e2e/images.py) and imported.
#
# Everything network-facing lives in one network namespace made here
# ($E2E_NETNS): the node address is on a veth inside it, pods hang off its
# bridge, and every iptables chain kube-proxy and portmap write is in it.
# Nothing routes out of it. Every file (etcd data, containerd root and state,
# kubelet root dir, certificates, kubeconfigs, logs, pid files) lives under
# $E2E_STATE. `down` stops what `up` started by PID (pid files, the
# containerd shims' and containers' pid files, the pods' cgroup), unmounts
# everything under $E2E_STATE, removes the pods' cgroups, deletes the
# namespace and the state dir. `up` runs `down` first, so a crashed run
# leaves nothing for the next one.
#
#   e2e/cluster.sh up       build what is missing, start, wait for a Ready node + DNS
#   e2e/cluster.sh down     stop and remove everything (idempotent)
#   e2e/cluster.sh env      the variables e2e/e2e.sh needs (KUBECONFIG, E2E_NETNS, ...)
#   e2e/cluster.sh exec CMD run CMD in the cluster's network namespace with its KUBECONFIG
#   e2e/cluster.sh status   what is running
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${E2E_STATE:-/var/tmp/roster-e2e}
NETNS=${E2E_NETNS:-roster-e2e}
E2E_CACHE=${E2E_CACHE:-$HOME/.cache/roster-e2e}
IMAGE=${IMAGE:-roster:e2e}
CURL_IMAGE=${CURL_IMAGE:-roster-e2e/curl:local}
PAUSE_IMAGE=docker.io/roster-e2e/pause:local
COREDNS_IMAGE=roster-e2e/coredns:local
NODE=roster-e2e-node
# Only inside $NETNS: the node's address (on a veth, no peer beyond it),
# the pods' bridge and the Service range.
NODE_IP=10.200.0.1
CLUSTER_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_IP=10.96.0.10
# The kubelet's pods live under this cgroup, in every v1 hierarchy.
CGROUP_ROOT=roster-e2e
APT_PACKAGES=(etcd-server containerd runc containernetworking-plugins iptables prometheus
  busybox-static curl openssl conntrack socat iproute2 util-linux)

PKI=$STATE/pki
LOGS=$STATE/logs
PIDS=$STATE/pids
SOCK=$STATE/run/containerd.sock
ADMIN_KUBECONFIG=$STATE/admin.kubeconfig

# fd 3: the caller's stderr, also from checks whose output is discarded.
exec 3>&2
say() { printf '[cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&3; }
die() { say "FAILED: $*"; exit 1; }
in_ns() { nsenter --net="/run/netns/$NETNS" "$@"; }

# --- teardown ---------------------------------------------------------------

# A pid file's process, if it is still the one we started: its command line
# names our state dir or the binary, or it lives in our pods' cgroup.
ours() {
  local pid=$1 hint=$2
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$hint" && return 0
  grep -q ":/$CGROUP_ROOT/" "/proc/$pid/cgroup" 2>/dev/null
}

stop_pid() { # pid, hint: TERM, then KILL after 10 s
  local pid=$1 hint=$2 i
  ours "$pid" "$hint" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    ours "$pid" "$hint" || return 0
    [ "$i" -lt 100 ] && sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
}

stop_component() {
  local name=$1 f=$PIDS/$1.pid
  [ -f "$f" ] || return 0
  stop_pid "$(cat "$f")" "$STATE"
  rm -f "$f"
}

# Every process left in the pods' cgroups, killed by PID.
kill_pod_processes() {
  local procs pid round
  for round in 1 2 3 4 5; do
    [ -d /sys/fs/cgroup/pids/"$CGROUP_ROOT" ] || return 0
    procs=$(find /sys/fs/cgroup/pids/"$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true)
    [ -n "$procs" ] || return 0
    for pid in $procs; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.5
    [ "$round" -lt 5 ] || say "processes left in the pods' cgroups: $procs"
  done
}

down() {
  local f pid
  if [ -d "$PIDS" ]; then
    for c in prometheus kubelet kube-proxy; do stop_component "$c"; done
    # containerd's shims and the containers they started.
    if [ -d "$STATE/containerd/state" ]; then
      while IFS= read -r f; do
        pid=$(cat "$f" 2>/dev/null || true)
        case $f in
          */shim.pid) stop_pid "$pid" "$STATE" ;;
          *) if ours "$pid" "$CGROUP_ROOT"; then kill -KILL "$pid" 2>/dev/null || true; fi ;;
        esac
      done < <(find "$STATE/containerd/state" -name '*.pid' 2>/dev/null)
    fi
    kill_pod_processes
    for c in containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_component "$c"; done
    for f in "$PIDS"/*.pid; do
      [ -f "$f" ] || continue
      stop_pid "$(cat "$f")" "$STATE"
      rm -f "$f"
    done
  fi
  kill_pod_processes
  # A crashed run's strays whose pid files are gone (a containerd shim, a
  # daemon started twice): their command lines name the state dir.
  local p
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" != $$ ] || continue
    if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- " $STATE/"; then
      say "stray process $pid: $(tr '\0' ' ' 2>/dev/null <"$p/cmdline" | cut -c1-100)"
      stop_pid "$pid" "$STATE"
    fi
  done
  # Mounts under the state dir (overlay rootfs, tmpfs volumes, netns and
  # shm bind mounts), deepest first; lazily when busy.
  local m left
  for _ in 1 2 3; do
    left=$(findmnt -rn -o TARGET | grep -F "$STATE" | awk '{print length, $0}' | sort -rn | cut -d' ' -f2- || true)
    [ -n "$left" ] || break
    while IFS= read -r m; do
      umount "$m" 2>/dev/null || true
    done <<<"$left"
  done
  left=$(findmnt -rn -o TARGET | grep -F "$STATE" || true)
  if [ -n "$left" ]; then
    say "lazy unmount of busy mounts: $left"
    while IFS= read -r m; do umount -l "$m" 2>/dev/null || true; done <<<"$left"
  fi
  # The pods' cgroups, deepest first.
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -d "$h$CGROUP_ROOT" ] || continue
    find "$h$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$h$CGROUP_ROOT" ] || say "cgroup left: $h$CGROUP_ROOT"
  done
  # containerd 1.6 puts its shims' sockets in /run/containerd/s whatever the
  # config says: remove the dirs it made there once they are empty.
  rmdir /run/containerd/s /run/containerd/fifo /run/containerd/runc/k8s.io /run/containerd/runc \
    /run/containerd 2>/dev/null || true
  if ip netns list 2>/dev/null | grep -qw "^$NETNS"; then
    ip netns delete "$NETNS"
  fi
  rm -rf "$STATE"
}

# --- install and build --------------------------------------------------------

install_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Debian's containerd and etcd packages start services where an init system
# runs them; this cluster runs its own, so stop the package's (by its pid file).
no_package_services() {
  local name pid
  for name in containerd etcd prometheus; do
    pid=$(pgrep -x "$name" -P 1 2>/dev/null | head -n1 || true)
    [ -z "$pid" ] && continue
    grep -qF "$STATE" "/proc/$pid/cmdline" 2>/dev/null && continue
    say "note: a $name not started by this script runs (pid $pid); it is left alone"
  done
}

load_tools() { # [--paths]
  local line
  while IFS= read -r line; do
    case $line in
      K8S_VERSION=*|K8S_BIN=*|HELM=*|COREDNS=*|PAUSE=*) export "${line?}" ;;
    esac
  done < <(e2e/build-tools.sh "$@")
}

build_images() {
  local dir=$E2E_CACHE/images
  mkdir -p "$dir"
  if [ ! -x target/release/roster ] || [ ! -x target/release/roster-agent ]; then
    die "no release binaries (cargo build --release --bin roster --bin roster-agent)"
  fi
  python3 e2e/images.py roster "$dir/roster.tar" "$IMAGE" --bin target/release/roster --bin target/release/roster-agent >&2
  [ -s "$dir/curl.tar" ] || python3 e2e/images.py curl "$dir/curl.tar" "$CURL_IMAGE" >&2
  python3 e2e/images.py pause "$dir/pause.tar" "$PAUSE_IMAGE" --pause "$PAUSE" >&2
  python3 e2e/images.py coredns "$dir/coredns.tar" "$COREDNS_IMAGE" --coredns "$COREDNS" >&2
}

# --- certificates and kubeconfigs ----------------------------------------------

cert() { # name, subject, extensions (openssl x509v3 lines)
  local name=$1 subj=$2 ext=$3
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 2 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
}

kubeconfig() { # file, cert name, server
  local file=$1 name=$2 server=$3
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: roster-e2e
    cluster:
      server: $server
      certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
  - name: $name
    user:
      client-certificate-data: $(base64 -w0 <"$PKI/$name.crt")
      client-key-data: $(base64 -w0 <"$PKI/$name.key")
contexts:
  - name: roster-e2e
    context: {cluster: roster-e2e, user: $name}
current-context: roster-e2e
EOF
}

make_pki() {
  mkdir -p "$PKI"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -days 2 \
    -subj "/CN=roster-e2e-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP,IP:$API_SERVICE_IP"
  cert kubelet-serving "/CN=$NODE" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$NODE,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP"
  cert admin "/O=system:masters/CN=roster-e2e-admin" "$client"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  cert kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  cert kube-scheduler "/CN=system:kube-scheduler" "$client"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE" "$client"
  cert kube-proxy "/CN=system:kube-proxy" "$client"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  local c
  for c in admin kube-controller-manager kube-scheduler kubelet kube-proxy; do
    kubeconfig "$STATE/$c.kubeconfig" "$c" "https://$NODE_IP:6443"
  done
}

# --- the network namespace ---------------------------------------------------

make_netns() {
  ip netns add "$NETNS"
  in_ns ip link set lo up
  # The node's address. Its veth peer has no address and no route: nothing
  # addressed outside the namespace gets anywhere (neighbour resolution fails).
  in_ns ip link add roster0 type veth peer name roster1
  in_ns ip addr add "$NODE_IP/32" dev roster0
  in_ns ip link set roster0 up
  in_ns ip link set roster1 up
  in_ns ip route add default dev roster0
  in_ns sysctl -q -w net.ipv4.ip_forward=1
  in_ns sysctl -q -w net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  in_ns sysctl -q -w net.bridge.bridge-nf-call-ip6tables=1 2>/dev/null || true
}

make_cgroups() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ "$h" = /sys/fs/cgroup/unified/ ] && continue
    mkdir -p "$h$CGROUP_ROOT"
    if [ -f "${h}cpuset.cpus" ]; then
      cat "${h}cpuset.cpus" >"$h$CGROUP_ROOT/cpuset.cpus"
      cat "${h}cpuset.mems" >"$h$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

# --- processes -----------------------------------------------------------------

start() { # name, command...: in the namespace, in its own session, pid recorded
  local name=$1
  shift
  setsid nsenter --net="/run/netns/$NETNS" "$@" >"$LOGS/$name.log" 2>&1 </dev/null 3>&- &
  echo $! >"$PIDS/$name.pid"
}

wait_until() { # seconds, what, command...
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${limit}s waiting for $what (logs: $LOGS)"
    sleep 0.5
  done
}

# Running (not a zombie); right after `start` it may not have exec'd yet.
alive() {
  local pid
  pid=$(cat "$PIDS/$1.pid")
  if [ ! -d "/proc/$pid" ] || grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
    die "$1 exited: $(tail -n 20 "$LOGS/$1.log")"
  fi
}
kc() { in_ns "$K8S_BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }
api_ready() { alive kube-apiserver && kc get --raw /readyz; }
node_ready() {
  alive kubelet
  [ "$(kc get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

start_control_plane() {
  start etcd etcd --name roster-e2e --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster roster-e2e=http://127.0.0.1:2380 --log-level warn
  etcd_ok() { alive etcd && in_ns curl -sf --max-time 2 http://127.0.0.1:2379/health; }
  wait_until 30 etcd etcd_ok

  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$NODE_IP" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --client-ca-file="$PKI/ca.crt" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --profiling=false --v=1
  wait_until 120 kube-apiserver api_ready

  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --use-service-account-credentials=true \
    --allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
    --service-cluster-ip-range="$SERVICE_CIDR" --profiling=false --v=1
  start kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$STATE/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
}

start_node() {
  mkdir -p "$STATE/containerd" "$STATE/run" "$STATE/cni/net.d" "$STATE/kubelet"
  cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  enable_selinux = false
  # This sandbox's root has no CAP_SYS_RESOURCE: it cannot lower an
  # oom_score_adj (the pause container's -998), so keep each at least ours.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  # One bridge for the pods (hairpin: a pod reaches itself through a
  # Service), portmap for hostPort.
  cat >"$STATE/cni/net.d/10-roster-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "roster-e2e",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$STATE/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  start containerd containerd --config "$STATE/containerd/config.toml"
  ctr_ok() { alive containerd && ctr --address "$SOCK" version; }
  wait_until 30 containerd ctr_ok
  local t
  for t in roster curl pause coredns; do
    ctr --address "$SOCK" -n k8s.io images import "$E2E_CACHE/${E2E_IMAGES_DIR:-images}/$t.tar" >/dev/null \
      || die "ctr images import $t.tar"
  done

  printf 'nameserver %s\nsearch cluster.local\n' "$DNS_IP" >"$STATE/resolv.conf"
  cat >"$STATE/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1, which kubelet >= 1.35 refuses unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
containerRuntimeEndpoint: unix://$SOCK
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: $STATE/resolv.conf
failSwapOn: false
# Images are imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
podCIDR: $NODE_POD_CIDR
maxPods: 60
EOF
  start kubelet "$K8S_BIN/kubelet" --config="$STATE/kubelet-config.yaml" \
    --kubeconfig="$STATE/kubelet.kubeconfig" --root-dir="$STATE/kubelet" \
    --cert-dir="$STATE/kubelet/pki" --hostname-override="$NODE" --node-ip="$NODE_IP" --v=1

  cat >"$STATE/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $NODE
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# conntrack limits are the machine's, not this namespace's: leave them alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy "$K8S_BIN/kube-proxy" --config="$STATE/kube-proxy-config.yaml" --v=1
  wait_until 120 "node $NODE Ready" node_ready
}

start_dns() {
  sed -e "s|@DNS_IP@|$DNS_IP|g" -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|g" e2e/coredns.yaml | kc apply -f - >/dev/null
  kc -n kube-system rollout status deploy/coredns --timeout=120s >/dev/null || die "CoreDNS did not start"
}

up() {
  local t0=$SECONDS
  down
  install_packages
  no_package_services
  load_tools
  build_images
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  make_netns
  make_cgroups
  make_pki
  say "control plane (Kubernetes $K8S_VERSION)"
  start_control_plane
  say "node: containerd, kubelet, kube-proxy"
  start_node
  say "CoreDNS"
  start_dns
  say "up in $((SECONDS - t0))s: Kubernetes $K8S_VERSION, node $NODE ($NODE_IP) in netns $NETNS"
}

env_vars() {
  load_tools --paths
  echo "KUBECONFIG=$ADMIN_KUBECONFIG"
  echo "E2E_NETNS=$NETNS"
  echo "E2E_STATE=$STATE"
  echo "E2E_NODE_IP=$NODE_IP"
  echo "E2E_SOCK=$SOCK"
  echo "K8S_VERSION=$K8S_VERSION"
  echo "KUBECTL=$K8S_BIN/kubectl"
  echo "HELM=$HELM"
  echo "CURL_IMAGE=$CURL_IMAGE"
}

status() {
  local f
  for f in "$PIDS"/*.pid; do
    [ -f "$f" ] || continue
    if ours "$(cat "$f")" "$STATE"; then echo "$(basename "$f" .pid): running ($(cat "$f"))"; else echo "$(basename "$f" .pid): gone"; fi
  done
  ip netns list | grep -w "$NETNS" || echo "no netns $NETNS"
  findmnt -rn -o TARGET | grep -cF "$STATE" | sed 's/^/mounts under state dir: /'
}

[ "${BASH_SOURCE[0]}" = "$0" ] || return 0
case ${1:-} in
  up) up ;;
  down) down; say "down: nothing left (state $STATE, netns $NETNS)" ;;
  env) env_vars ;;
  status) status ;;
  exec)
    shift
    load_tools --paths
    KUBECONFIG=$ADMIN_KUBECONFIG PATH="$K8S_BIN:$(dirname "$HELM"):$PATH" in_ns "$@"
    ;;
  *) echo "usage: e2e/cluster.sh up|down|env|status|exec CMD..." >&2; exit 2 ;;
esac
