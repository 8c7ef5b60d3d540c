#!/usr/bin/env bash
# Install what building and testing roster needs, idempotently.
#   scripts/setup.sh          build deps (cmake for libz-ng-sys)
#   scripts/setup.sh kit      + a venv with the offline Helm/Kubernetes checkers, shellcheck
#   scripts/setup.sh browser  + Debian's chromium for the UI test
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v curl >/dev/null || need_apt+=(curl)
for what in "$@"; do
  case "$what" in
    browser) command -v chromium >/dev/null || need_apt+=(chromium) ;;
    bench) for p in nginx haproxy wrk; do command -v "$p" >/dev/null || need_apt+=("$p"); done ;;
    kit) command -v shellcheck >/dev/null || need_apt+=(shellcheck) ;;
  esac
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# `make lint`'s unused-dependency check.
command -v cargo-machete >/dev/null || cargo install --locked --quiet cargo-machete

for what in "$@"; do
  if [ "$what" = kit ]; then
    if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import helm_python, kubernetes_validate, jsonpatch, yaml' 2>/dev/null; then
      python3 -m venv .venv
      .venv/bin/pip install -q --upgrade pip
      .venv/bin/pip install -q -r scripts/requirements-kit.txt
    fi
  fi
done
