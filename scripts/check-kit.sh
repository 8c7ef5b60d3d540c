#!/usr/bin/env bash
# Offline checks of the Kubernetes kit (make test-kit): chart lint and strict
# validation of every render, bad values rejected, manifests/ and
# values.schema.json fresh, and the webhook round trip against the real
# `roster inject`. No cluster, no helm binary. Bounded: every wait has a
# timeout, and only processes started here are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh kit
# The kind end-to-end cannot run here (no docker): at least it is sound shell.
shellcheck kind/e2e.sh scripts/check-kit.sh scripts/setup.sh
CARGO=${CARGO:-cargo}
$CARGO build --quiet --bin roster
exec timeout 300 .venv/bin/python scripts/kit.py check --roster target/debug/roster
