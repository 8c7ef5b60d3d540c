#!/usr/bin/env bash
# Builds (once, cached outside the repo) what the local e2e cluster runs:
#   - kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
#     kube-proxy and kubectl from k8s.io/kubernetes at the version pinned in
#     e2e/tools/go.mod (one `go build` for all);
#   - helm and CoreDNS at the versions pinned below (`go install mod@ver`);
#   - the pause program (e2e/images/pause, static Go).
# Output: $E2E_CACHE/k8s-<ver>/bin, $E2E_CACHE/helm-<ver>/helm, ...
# Every build takes /tmp/roster-build.lock (one heavy build at a time).
#
#   e2e/build-tools.sh          build what is missing; print where it is
#   e2e/build-tools.sh --paths  only print where it is (built or not)
set -euo pipefail
cd "$(dirname "$0")/.."

E2E_CACHE=${E2E_CACHE:-$HOME/.cache/roster-e2e}
HELM_VERSION=${HELM_VERSION:-v4.3.2}
COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
LOCK=/tmp/roster-build.lock
K8S_VERSION=$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes \(v[0-9.]*\).*/\1/p' e2e/tools/go.mod | head -n1)
[ -n "$K8S_VERSION" ] || { echo "build-tools: no k8s.io/kubernetes version in e2e/tools/go.mod" >&2; exit 2; }
export CGO_ENABLED=0

K8S_BIN=$E2E_CACHE/k8s-$K8S_VERSION/bin
HELM_BIN=$E2E_CACHE/helm-$HELM_VERSION
COREDNS_BIN=$E2E_CACHE/coredns-$COREDNS_VERSION
SMALL_BIN=$E2E_CACHE/pause-$(cat e2e/images/pause/*.go e2e/images/go.mod | sha256sum | cut -c1-12)

say() { echo "build-tools: $*" >&2; }

paths() {
  echo "K8S_VERSION=$K8S_VERSION"
  echo "K8S_BIN=$K8S_BIN"
  echo "HELM=$HELM_BIN/helm"
  echo "COREDNS=$COREDNS_BIN/coredns"
  echo "PAUSE=$SMALL_BIN/pause"
}
if [ "${1:-}" = --paths ]; then
  paths
  exit 0
fi

if [ ! -x "$K8S_BIN/kubelet" ]; then
  say "Kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl) -> $K8S_BIN"
  minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$K8S_BIN.tmp"
  (cd e2e/tools && flock "$LOCK" go build -trimpath -ldflags "$ldflags" -o "$K8S_BIN.tmp/" tool)
  rm -rf "$K8S_BIN" && mv "$K8S_BIN.tmp" "$K8S_BIN"
fi

if [ ! -x "$HELM_BIN/helm" ]; then
  say "helm $HELM_VERSION -> $HELM_BIN"
  mkdir -p "$HELM_BIN"
  GOBIN=$HELM_BIN flock "$LOCK" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
fi

if [ ! -x "$COREDNS_BIN/coredns" ]; then
  say "CoreDNS $COREDNS_VERSION -> $COREDNS_BIN"
  mkdir -p "$COREDNS_BIN"
  GOBIN=$COREDNS_BIN flock "$LOCK" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
fi

if [ ! -x "$SMALL_BIN/pause" ]; then
  say "pause -> $SMALL_BIN"
  mkdir -p "$SMALL_BIN.tmp"
  (cd e2e/images && flock "$LOCK" go build -trimpath -ldflags "-s -w" -o "$SMALL_BIN.tmp/" ./pause)
  rm -rf "$SMALL_BIN" && mv "$SMALL_BIN.tmp" "$SMALL_BIN"
fi

paths
