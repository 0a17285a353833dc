# The two commands of the README: `make run` and `make test`. Both install what they need.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS ?= never
export UV_LINK_MODE ?= copy

# uv from PATH, or bootstrapped with pip into .tools/ (a fresh machine has only Python).
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := .tools/bin/uv
endif
ACCEPTANCE := ../shared/acceptance/run
# Debian's Chromium for the browser tests (tests/ui); Playwright never downloads a browser.
CHROMIUM := /usr/bin/chromium
# wrk, an independent HTTP load generator, for the benchmarks (bench/) and their smoke test.
WRK := /usr/bin/wrk
# Apache Kafka's jars from Maven Central (tools/kafka/pom.xml), for the tests and benchmarks;
# Java 17 and Maven from Debian when missing.
JAVA := $(shell command -v java 2>/dev/null)
MVN := $(shell command -v mvn 2>/dev/null)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test test-faults install kafka java image lint typecheck unit integration e2e acceptance contracts bench bench-quick clean help

help:
	@echo "make run    start the whole system with embedded infrastructure (scanner-auth dev)"
	@echo "make test   lint, type-check and run every test against real PostgreSQL, Kafka-protocol broker and SMTP"
	@echo "make image  build deploy/Dockerfile with podman (deploy/build-local), unless built for these sources"
	@echo "make test-faults   only the fault, fuzzing and security suites (make test runs them too)"
	@echo "make bench  every benchmark figure against its floor, 3 runs, medians (bench/README.md)"
	@echo "make bench-quick   one run of each benchmark figure"

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

$(WRK):
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk

install: $(UV)
	$(UV) sync --frozen --all-packages

# Java and Maven, from Debian, when either is missing.
java:
	@if [[ -z "$(JAVA)" || -z "$(MVN)" ]]; then \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless maven; \
	fi

# Kafka's jars, resolved with Maven once into .tools/kafka/lib (about 55 MB); instant after.
kafka: install java
	$(UV) run --frozen python -m scanner_auth_shared.kafka_broker

# The image of deploy/Dockerfile for the current sources, for tests/deploy/test_image.py: built
# with podman (no Docker), which deploy/build-local installs with Debian's buildah, runc and
# mmdebstrap when missing. Under a second when the image for this content exists.
image:
	deploy/build-local

run: install
	$(UV) run --frozen scanner-auth dev

lint: install
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

typecheck: install
	$(UV) run --frozen mypy shared/src src services/*/src

unit: install
	$(UV) run --frozen pytest -m unit

integration: install kafka
	$(UV) run --frozen pytest -m integration

e2e: install kafka
	$(UV) run --frozen pytest -m e2e

test: install kafka $(CHROMIUM) $(WRK) image lint typecheck
	$(UV) run --frozen pytest
	@if [[ -x $(ACCEPTANCE) ]]; then $(ACCEPTANCE); else echo "acceptance checks not found at $(ACCEPTANCE): skipped"; fi

test-faults: install kafka
	$(UV) run --frozen pytest tests/faults tests/fuzz tests/security

bench: install kafka $(WRK)
	$(UV) run --frozen python bench/run.py --profile full

bench-quick: install kafka $(WRK)
	$(UV) run --frozen python bench/run.py --profile quick

contracts: install
	$(UV) run --frozen scanner-auth contracts

acceptance: install
	$(ACCEPTANCE)

clean:
	rm -rf .dev .tools .mypy_cache .ruff_cache
