# captioner: `make run` serves on :9000, `make test` installs what is missing and runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
LOCK := requirements/lock.txt
LOCK_TOOLS ?= /tmp/captioner-lock-tools
WORKERS ?= 1
SECURE ?= 0
REGISTRY ?= 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install lock lock-roles lock-tools run registry registry-stop broker broker-stop lint typecheck imports test-tools test test-unit docs bench bench-scaling bench-phase bench-gpu bench-gpu-check chaos chaos-tools clean

install: $(INSTALLED)

# Every package comes pinned, with hashes, from the lock; the project itself goes in without resolving
# anything, built by the locked setuptools.
$(INSTALLED): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install --require-hashes -r $(LOCK)
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	@touch $@

# Re-resolves every extra for this machine (Linux x86_64, Python 3.11) to the newest releases within
# pyproject.toml's ranges (LOCK_UPGRADE= keeps today's pins and only adds what is new); pip-tools lives
# in its own venv, outside the project's. Then one lock per image (`lock-roles`): the base install plus
# one extra, constrained to the full lock's pins, so each image runs exactly what `make test` tested.
LOCK_UPGRADE ?= --upgrade
LOCK_FLAGS := --generate-hashes --allow-unsafe --all-build-deps --strip-extras --no-emit-index-url --no-emit-find-links
lock: lock-tools
	$(LOCK_TOOLS)/bin/pip-compile $(LOCK_UPGRADE) $(LOCK_FLAGS) \
		--extra api --extra worker --extra dev --extra int8 --output-file $(LOCK) pyproject.toml
	$(MAKE) lock-roles

# A role lock starts as a copy of the full lock, so that pip-compile keeps its pins and reuses its hashes
# (hashing torch anew downloads every one of its wheels and their CUDA wheels, many GB), and -c holds the
# resolution to those pins.
lock-roles: lock-tools
	for role in api worker; do \
		cp $(LOCK) requirements/$$role.txt && \
		$(LOCK_TOOLS)/bin/pip-compile $(LOCK_FLAGS) -c $(LOCK) --extra $$role \
			--output-file requirements/$$role.txt pyproject.toml || exit 1; \
	done

lock-tools:
	@test -x $(LOCK_TOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install pip-tools; }

broker:
	@if [ -n "$$KAFKA_BOOTSTRAP_SERVERS" ]; then echo "using cluster $$KAFKA_BOOTSTRAP_SERVERS"; \
	else infra/kafka/broker.sh start; fi

broker-stop:
	infra/kafka/broker.sh stop

# SECURE=1: TLS, SASL/SCRAM and ACLs, each process its own principal (docs/secured-kafka.md).
# REGISTRY=1: a local schema registry (infra/registry) for the run, so requests, replies and caption-cache
# entries are written in its framing (docs/schema-registry.md); stopped when the run ends.
run: install
	@WORKERS=$(WORKERS) SECURE=$(SECURE) REGISTRY=$(REGISTRY) infra/run-local.sh

registry:
	infra/registry/registry.sh start

registry-stop:
	infra/registry/registry.sh stop

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

imports: install  # the layers contract in pyproject.toml ([tool.importlinter])
	$(BIN)/lint-imports

# Programs some tests drive, as program:Debian package: chromium for the demo page (Playwright downloads
# no browser), nginx to check the compose front's configuration, promtool to check the alert rules, Maven
# and a JDK to build the Java and Spring example clients. As root with apt the missing ones are installed;
# elsewhere this says what to install, and those tests fail saying the same. The Go example needs Go 1.24+,
# newer than Debian's: it is not installed here.
TEST_PROGRAMS := chromium:chromium nginx:nginx promtool:prometheus mvn:maven javac:default-jdk-headless
test-tools:
	@missing="$$(for p in $(TEST_PROGRAMS); do command -v $${p%%:*} >/dev/null || echo $${p#*:}; done)"; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } \
		|| echo "missing: $$missing (Debian/Ubuntu: apt-get install $$missing); the tests that use them will fail"; }

# Kafka's jars and the schema registry's jar are fetched (built) before the tests start, so that the tests
# write nothing inside the repository.
# The tests run in PYTEST_WORKERS pytest-xdist processes (0: in pytest's own): much of an integration test's
# time is spent waiting on a broker or a service process, which another test's work can use; on 2 cores,
# three workers keep them busiest (docs/development/testing.md).
PYTEST_WORKERS ?= 3
test: lint typecheck imports test-tools
	infra/kafka/broker.sh fetch
	infra/registry/registry.sh fetch
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

# The documentation site (mkdocs.yml: docs/ and schemas/README.md), built strictly: a broken link or anchor
# fails it. `make test` builds it too, into a temporary folder (tests/test_docs_site.py).
DOCS_SITE ?= .local/site
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict -d $(DOCS_SITE)
	@echo "docs: $(DOCS_SITE)/index.html"

bench: install
	$(BIN)/python -m bench

bench-scaling: install  # answered rate with 1, 2, 3 pinned workers (BENCH_SCALING_WORKERS)
	$(BIN)/python -m bench.scaling

bench-phase: install  # one phase alone, repeated, for side-by-side runs: PHASE=saturation|capacity|api-cost|memory|exactly-once|in-process REPEAT=2
	$(BIN)/python -m bench.phase $(PHASE) --repeat $(or $(REPEAT),1)

bench-gpu: install  # needs a CUDA device
	$(BIN)/python -m bench.gpu $(BENCH_GPU_ARGS)

bench-gpu-check: install  # needs a CUDA device: tensor-pipeline agreement on CUDA + make bench's GPU figures (~8 min)
	PYTHON=$(BIN)/python bench/gpu_check.sh

chaos: install chaos-tools  # three-node Kafka cluster, two APIs, two workers, load, one fault after another (~6 min)
	$(BIN)/python -m bench.chaos

# The network-partition fault needs iptables; as root with apt it is installed, elsewhere that fault is
# reported as skipped, with the reason.
chaos-tools:
	@command -v iptables >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables; } \
		|| echo "iptables missing: the network-partition fault will be skipped"; }

clean:
	-infra/kafka/broker.sh stop
	-infra/registry/registry.sh stop
	rm -rf .local/kafka/state-* .local/registry/state-* .pytest_cache .mypy_cache .ruff_cache
