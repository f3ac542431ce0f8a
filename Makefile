# The verbs of this project. Everything a target needs it builds or installs itself.
# Build outputs and caches live outside the checkout (CACHE), so a fresh clone is fast.
SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/voice-operator
export CARGO_TARGET_DIR ?= $(CACHE)/target
export CARGO_TERM_COLOR ?= never
PLANE_DIR := $(CURDIR)/.cluster
CRD_FILE := crds/voice.workflow.io_voicepipelines.yaml
CHART := deploy/helm/voice-operator
CARGO ?= cargo

.PHONY: demo demo-down docs help deps plane cluster-up cluster-down fmt lint crds crds-check install run \
        build test test-unit test-integration test-python bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

demo: ## build everything, start a local cluster, the operator, a pipeline and one spoken turn
	@tools/demo.sh

demo-down: ## stop everything make demo started
	@tools/demo-down.sh

deps: ## install the system packages the build and tests use (apt; idempotent)
	@tools/deps.sh

plane: ## build the control plane's binaries (and helm, for the chart tests) from upstream sources (cached)
	@tests/plane/build.sh --with-helm >/dev/null

cluster-up: plane ## start etcd, kube-apiserver, controller-manager, scheduler and kwok on loopback
	@tests/plane/up.sh

cluster-down: ## stop every process cluster-up started
	@tests/plane/down.sh

fmt: ## format the Rust code
	$(CARGO) fmt --all

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

crds: ## regenerate crds/ (and the Helm chart's copy) from the Rust types
	@# Written beside it, then renamed: the tracked file is never empty or half-written.
	$(CARGO) run -q --locked -p voice-operator -- crd > $(CRD_FILE).new
	mv $(CRD_FILE).new $(CRD_FILE)
	cp $(CRD_FILE) $(CHART)/crds/

crds-check: crds ## fail when crds/ differs from what the Rust types generate
	@git diff --exit-code -- crds/ $(CHART)/crds/ || { echo "crds/ is stale: run 'make crds' and commit it" >&2; exit 1; }

docs: ## regenerate docs/reference/voicepipeline.md from the CRD schema
	UPDATE_DOCS=1 $(CARGO) test -q --locked -p deploy-tests --test crd_reference

install: ## apply the CRDs to the cluster of $$KUBECONFIG
	kubectl apply --server-side -f crds/

run: ## run the operator against the cluster of $$KUBECONFIG
	$(CARGO) run --locked -p voice-operator -- run

build: ## build every binary
	$(CARGO) build --workspace --locked --bins

test: deps plane lint crds-check ## everything CI runs: lint, drift checks, unit, API-server and end-to-end tests
	tests/with-plane.sh $(MAKE) --no-print-directory test-unit test-integration test-python

test-unit: ## fast unit tests beside the code
	$(CARGO) test --workspace --locked --lib --bins

# The end-to-end tests run the binaries as processes: built once here, found by these names.
BINS := $(CARGO_TARGET_DIR)/debug
TEST_BINS := VOICE_BINS_DIR=$(BINS) VOICE_GATEWAY_BIN=$(BINS)/voice-gateway \
	VOICE_SIM_BIN=$(BINS)/voice-sim VOICE_CLIENT_BIN=$(BINS)/voice-client

test-integration: ## API-server and end-to-end tests under tests/ (starts the plane if needed)
	$(CARGO) build --workspace --locked --bins
	$(TEST_BINS) $(CARGO) test --workspace --locked --no-fail-fast --test '*'

test-python: ## NVIDIA's riva client and the openai SDK against the simulator and gateway (venv in CACHE)
	$(CARGO) build --workspace --locked --bins
	$(TEST_BINS) tests/python/run.sh

bench: ## benchmarks: control plane, gateway, operator (results and commands: BENCHMARKS.md)
	tests/plane/bench.sh 5
	crates/voice-gateway/bench.sh
	tests/operator/bench.sh
