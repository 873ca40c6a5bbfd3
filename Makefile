# walstream — everything runs from .venv, created here from requirements.lock.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test unit integration lint bench stack-up stack-down stack-status venv clean browser

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

## make run: local services + a worker with the demo namespace, in the foreground
run: $(STAMP)
	$(BIN)/walstream stack up
	$(BIN)/walstream demo

## make test: lint, unit tests (memory:// and rocksdb://), then integration tests on real services
test: $(STAMP) lint unit stack-up integration

lint: $(STAMP)
	$(BIN)/ruff check walstream agents tables tests bench
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP) browser
	$(BIN)/pytest -q tests/integration

## Debian's Chromium (and ChromeDriver) for the pages' browser tests (tests/integration/test_pages.py)
browser:
	@command -v chromium >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core; }

## make bench: benchmarks against raw baselines, same services, one run
bench: $(STAMP) stack-up
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.scheduler
	$(BIN)/python -m bench.recovery
	$(BIN)/python -m bench.replication
	$(BIN)/python -m bench.index_check

stack-up: $(STAMP)
	$(BIN)/walstream stack up

stack-down: $(STAMP)
	$(BIN)/walstream stack down

stack-status: $(STAMP)
	$(BIN)/walstream stack status

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
