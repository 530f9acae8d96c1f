# Sluice: the two commands a user needs are `make demo` and `make test`.

CARGO      ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
BIN_DIR    := $(TARGET_DIR)/debug
VENV       ?= .venv
PYTHON     := $(VENV)/bin/python

# One version for the binaries, the chart and the image: the workspace's, in Cargo.toml.
VERSION    := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
IMAGE      ?= ghcr.io/sluice-dev/sluice
CONTAINER  ?= docker
COMMIT     := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

.PHONY: demo test build fmt-check clippy unit validate crds venv e2e soak bench image clean

# The demo's ports on 127.0.0.1: make demo PORT=8081 ADMIN_PORT=9902 AGENT_PORTS=9011,9012,9013
PORT        ?= 8080
ADMIN_PORT  ?= 9901
AGENT_PORTS ?= 9001,9002,9003

## demo: build, start three demo agents and the proxy on 127.0.0.1:$(PORT) (Ctrl-C stops)
demo:
	$(CARGO) build -p sluice -p sluice-demo-agent
	SLUICE_BIN_DIR=$(BIN_DIR) PORT=$(PORT) ADMIN_PORT=$(ADMIN_PORT) AGENT_PORTS=$(AGENT_PORTS) \
	  bash deploy/examples/standalone/demo.sh

## test: everything CI runs
test: fmt-check clippy build unit validate

build:
	$(CARGO) build --workspace --all-targets

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p sluice-proxy -p sluice --all-targets --features sluice/otlp -- -D warnings

unit: build venv
	SLUICE_PYTHON=$(abspath $(PYTHON)) $(CARGO) test --workspace --no-fail-fast
	$(CARGO) test -p sluice-proxy --features otlp --lib --test otlp

## validate: lint and render the Helm chart, validate CRDs and rendered objects offline
validate: venv build
	PYTHON=$(PYTHON) SLUICE_BIN=$(BIN_DIR)/sluice bash scripts/validate-manifests.sh

venv: $(VENV)/.installed
$(VENV)/.installed: scripts/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
	touch $@

## crds: regenerate crds/ and the chart's copy from the Rust types
crds:
	$(CARGO) run --quiet -p sluice -- crds --out crds --out charts/sluice/crds

## e2e: against a real cluster from KUBECONFIG (skipped when there is none)
e2e:
	$(CARGO) build -p sluice
	SLUICE_BIN=$(BIN_DIR)/sluice bash scripts/e2e-cluster.sh

## image: build the image $(IMAGE):$(VERSION) that the chart runs (CONTAINER=podman for Podman)
image:
	$(CONTAINER) build --build-arg SLUICE_VERSION=$(VERSION) --build-arg SLUICE_GIT_COMMIT=$(COMMIT) \
	  -t $(IMAGE):$(VERSION) .
	@echo "built $(IMAGE):$(VERSION); load it into kind with: kind load docker-image $(IMAGE):$(VERSION)"

## soak: the fault cases of tests/faults.rs under load for SOAK_SECONDS each (60 by
## default; `make test` runs them for 12), their counts written to $(SOAK_REPORT)
SOAK_SECONDS ?= 60
SOAK_REPORT  ?= $(TARGET_DIR)/fault-report.txt
soak:
	$(CARGO) build -p sluice -p sluice-demo-agent
	rm -f $(SOAK_REPORT)
	SLUICE_FAULT_SECONDS=$(SOAK_SECONDS) SLUICE_FAULT_REPORT=$(SOAK_REPORT) \
	  $(CARGO) test -p sluice-e2e --test faults -- --test-threads=1
	cat $(SOAK_REPORT)

## bench: criterion benchmarks
bench:
	$(CARGO) bench --workspace

clean:
	$(CARGO) clean
	rm -rf $(VENV)
