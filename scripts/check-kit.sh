#!/usr/bin/env bash
# Offline checks of the Kubernetes kit (make test-kit): chart lint and strict
# validation of every render, bad values rejected, manifests/ and
# values.schema.json fresh, and the webhook round trip against the real
# `roster inject`. No cluster, no helm binary. Bounded: every wait has a
# timeout, and only processes started here are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh kit
# The end-to-end and soak scripts (`make e2e`, `make soak`; not part of `make test`): sound shell.
shellcheck -x e2e/e2e.sh e2e/cluster.sh e2e/build-tools.sh scripts/check-kit.sh scripts/setup.sh bench/soak.sh
CARGO=${CARGO:-cargo}
$CARGO build --quiet --bin roster
exec timeout 300 .venv/bin/python scripts/kit.py check --roster target/debug/roster
