# roster — the commands a developer and CI need.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build release test test-rust test-kit lint fmt setup demo run-lb bench e2e image manifests schema clean

all: build

setup:
	scripts/setup.sh

build: setup
	$(CARGO) build

release: setup
	$(CARGO) build --release

## The one test command (CI runs exactly this): setup, fmt, clippy, tests, kit checks.
test: setup lint test-rust test-kit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test-rust:
	$(CARGO) test --all-targets

test-kit:
	@if [ -x scripts/check-kit.sh ]; then scripts/check-kit.sh; else echo "kit checks: none yet"; fi

fmt:
	$(CARGO) fmt --all

## One machine, no cluster: an LB and three demo backends on loopback.
demo: build
	./target/debug/roster demo

run-lb: build
	./target/debug/roster lb --allowed-networks 127.0.0.0/8 --listen 127.0.0.1:8000 --control-listen 127.0.0.1:8080

## roster vs nginx and HAProxy, the pool at 10,000 backends, the registry at
## scale, the agent's footprint -> BENCHMARKS.md (loopback only, <= 10 min).
bench:
	bench/run.sh

schema: build
	./target/debug/roster schema

clean:
	$(CARGO) clean
	rm -rf .venv
