# captioner: `make run` serves on :9000, `make test` installs what is missing and runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
WORKERS ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run broker broker-stop lint typecheck test test-unit bench bench-gpu chaos clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev,int8]'
	@touch $@

broker:
	@if [ -n "$$KAFKA_BOOTSTRAP_SERVERS" ]; then echo "using cluster $$KAFKA_BOOTSTRAP_SERVERS"; \
	else infra/kafka/broker.sh start; fi

broker-stop:
	infra/kafka/broker.sh stop

run: install
	@WORKERS=$(WORKERS) infra/run-local.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench

bench-gpu: install  # needs a CUDA device
	$(BIN)/python -m bench.gpu $(BENCH_GPU_ARGS)

chaos: install  # three-node Kafka cluster, two APIs, two workers, load, one fault after another (~10 min)
	$(BIN)/python -m bench.chaos

clean:
	-infra/kafka/broker.sh stop
	rm -rf .local/kafka/state-* .pytest_cache .mypy_cache .ruff_cache
