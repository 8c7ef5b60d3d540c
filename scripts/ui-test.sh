#!/usr/bin/env bash
# End-to-end test of the operator page (GET / on the LB's control port) in
# headless Chromium, driven by playwright-core; writes target/ui.png (UI_SCREENSHOT=docs/ui.png to refresh the README screenshot).
#   scripts/ui-test.sh               the test (what `make test-ui` runs)
#   scripts/ui-test.sh --scale N     measure the page with N registered backends
# Installs chromium (apt) and the npm deps idempotently; skips with a message
# and exit 0 when either cannot be had. Set ROSTER_UI_NO_INSTALL=1 to skip the
# install step, ROSTER_BIN to test another binary.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() { echo "ui test: SKIPPED: $*"; exit 0; }

scale=""
if [ "${1:-}" = "--scale" ]; then scale="${2:?--scale needs a number}"; fi

if [ "${ROSTER_UI_NO_INSTALL:-0}" != 1 ]; then
  scripts/setup.sh browser || echo "ui test: could not install chromium (scripts/setup.sh browser failed)"
fi
export CHROMIUM="${CHROMIUM:-$(command -v chromium || true)}"
{ [ -n "$CHROMIUM" ] && [ -x "$CHROMIUM" ]; } || skip "chromium is not installed (Debian: apt-get install chromium; or set CHROMIUM=/path)"
command -v node >/dev/null && command -v npm >/dev/null || skip "node and npm are not installed"
[ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] || skip "node >= 20 needed, found $(node --version)"

(
  cd tests/browser
  want="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ ! -f node_modules/playwright-core/package.json ] || [ "$(cat node_modules/.roster-lock 2>/dev/null)" != "$want" ]; then
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" > node_modules/.roster-lock
  fi
) || skip "npm ci failed in tests/browser (is the npm registry reachable?)"

if [ -z "${ROSTER_BIN:-}" ]; then
  cargo build --quiet --bin roster
  export ROSTER_BIN="$PWD/target/debug/roster"
fi

# node runs in its own process group: on any exit, end that group (node, the
# LB it started, Chromium) and nothing else.
pid=""
cleanup() { if [ -n "$pid" ]; then kill -TERM -- "-$pid" 2>/dev/null || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM
cd tests/browser
if [ -n "$scale" ]; then
  setsid node scale.mjs "$scale" &
else
  setsid node --test --test-concurrency=1 --test-timeout=60000 --test-reporter=spec ui.spec.mjs &
fi
pid=$!
set +e
wait "$pid"
exit $?
