# mailrec: one command runner. `make run` (train, export, serve) and `make test` are the two
# commands a newcomer needs; everything else is here for development.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# The data directory: given, else the shared folder beside a checkout, else the download cache.
MAILREC_DATA_DIR ?= $(if $(wildcard ../shared/data/ml-100k),$(abspath ../shared/data),)
export MAILREC_DATA_DIR

.PHONY: help venv system-deps run test lint format bench bench-offline bench-offline-quick bench-serve up down clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[train,bench,dev]"
	touch $@

venv: $(VENV)/.installed ## create the virtual environment (CPU torch, no CUDA download)

system-deps: ## install the Debian packages the tests need (redis-server, prometheus, wrk, jq), if missing
	bash scripts/system-deps.sh redis-server prometheus wrk jq

run: venv ## data, training (control + mail), export, and the service on an embedded Redis
	bash scripts/run.sh

test: venv system-deps ## the whole test suite
	$(PY) -m pytest

lint: venv ## ruff + mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy service model_export benchmarks tests

format: venv
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: bench-offline bench-serve ## every benchmark

bench-offline: venv ## MAIL against the cold-start baselines (about an hour)
	$(PY) -m benchmarks.offline

bench-offline-quick: venv ## the same, at most 5 minutes
	$(PY) -m benchmarks.offline --quick

bench-serve: venv ## load benchmark of the service against the HTTP floor
	bash scripts/system-deps.sh redis-server wrk
	$(PY) -m benchmarks.serving

up: ## the docker-compose stack (training job, service, Redis, Prometheus, Grafana)
	docker compose up --build

down:
	docker compose down

clean:
	rm -rf runs bundles .pytest_cache .mypy_cache .ruff_cache
