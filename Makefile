# roster — the commands a developer and CI need.
SHELL := /bin/bash
CARGO ?= cargo
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
IMAGE ?= roster:$(VERSION)

.PHONY: all build release test test-rust test-kit test-ui lint fmt setup demo run-lb bench soak fuzz e2e image image-push manifests schema docs clean

all: build

setup:
	scripts/setup.sh

build: setup
	$(CARGO) build

release: setup
	$(CARGO) build --release

## The one test command (CI runs exactly this): setup, fmt, clippy, tests, kit checks, UI.
test: setup lint test-rust test-kit test-ui

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) machete
	python3 scripts/check-size.py
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps
	@$(CARGO) run --quiet --bin roster -- docs config | diff -u docs/configuration.md - \
		|| { echo "docs/configuration.md is stale: run make docs"; exit 1; }

test-rust:
	$(CARGO) test --all-targets
	$(CARGO) test --doc

## The operator page in headless Chromium (installs chromium + npm deps; skips without them).
test-ui:
	scripts/ui-test.sh

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
## scale, the agent's footprint, hostile clients per listener -> BENCHMARKS.md
## (loopback only, <= 15 min).
bench:
	bench/run.sh

## SOAK_MINUTES (default 30) of mixed load through one release LB (HTTP/1.1 + h2c,
## registration churn, failing backends, config reloads, a hang-up storm); PASS
## when RSS, fds, threads and series stay flat and no request failed outside the
## injected faults (loopback only; not part of `make test`; SOAK_MINUTES=2 for a check).
soak:
	bench/soak.sh

## Every cargo-fuzz target (fuzz/) for FUZZ_SECONDS (default 120) each, on
## nightly; fails on a crash. Not part of `make test` (tests/fuzz_corpus.rs
## replays the corpora there).
fuzz:
	scripts/fuzz.sh

## The chart's values.schema.json, from the Rust types (`roster schema` prints the config file's).
schema: build
	./target/debug/roster schema --helm > charts/roster/values.schema.json
	@echo "wrote charts/roster/values.schema.json"

## docs/configuration.md, generated from the config types and the CLI (`roster docs config`);
## `make lint` and a unit test fail when it is stale.
docs: build
	./target/debug/roster docs config > docs/configuration.md
	@echo "wrote docs/configuration.md"

## manifests/ for `kubectl apply -k manifests/`, rendered from the chart (never edit by hand).
manifests: schema
	scripts/setup.sh kit
	.venv/bin/python scripts/kit.py manifests manifests

## The container image (needs docker): one binary, distroless, non-root.
## For a cluster: make image-push IMAGE=registry.example.com/roster:$(VERSION)
image:
	docker build -t $(IMAGE) .

image-push: image
	docker push $(IMAGE)

## End to end on a real cluster, every scenario of e2e/e2e.sh, then everything torn
## down; not part of `make test`. Default: a single-node Kubernetes of host processes
## built here (e2e/cluster.sh: root; installs and builds what is missing, cached in
## ~/.cache/roster-e2e; images built locally, no registry). E2E_PROVIDER=kind: kind
## clusters 1.29, 1.30 and 1.36 (E2E_VERSIONS="1.30" for one; docker, kind, helm, kubectl).
e2e:
	IMAGE=$(IMAGE) E2E_PROVIDER="$(E2E_PROVIDER)" E2E_VERSIONS="$(E2E_VERSIONS)" e2e/e2e.sh

clean:
	$(CARGO) clean
	rm -rf .venv
