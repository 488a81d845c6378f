# mailrec: one command runner. `make run` (train, export, serve) and `make test` are the two
# commands a newcomer needs; everything else is here for development.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# The locks (requirements/*.lock, `make lock`): every package's version, used as pip constraints
# (`-c`) by `make venv` (so CI) and the images. dev.lock: every extra but gpu, with TORCH's CPU build.
DEV_LOCK := requirements/dev.lock
SERVE_LOCK := requirements/serve.lock
LOCK := CUSTOM_COMPILE_COMMAND="make lock" $(PY) -m piptools compile -q --strip-extras \
	--no-emit-index-url --no-emit-find-links $(LOCK_ARGS)
# gpu-check's own environment: onnxruntime-gpu (never beside the CPU wheel), with CUDA and cuDNN from
# NVIDIA's wheels (onnxruntime-gpu's cuda and cudnn extras) for machines that have only a driver.
GPU_VENV ?= .venv-gpu
GPU_PY := $(GPU_VENV)/bin/python
GPU_ORT ?= onnxruntime-gpu[cuda,cudnn]
GPU_BUNDLE ?= .cache/gpu-check/bundle
# The data directory: given, else the shared folder beside a checkout, else the download cache.
MAILREC_DATA_DIR ?= $(if $(wildcard ../shared/data/ml-100k),$(abspath ../shared/data),)
export MAILREC_DATA_DIR

.PHONY: help venv lock system-deps run test test-fast lint format bench bench-offline bench-offline-all bench-offline-quick bench-offline-rating bench-serve gpu-check up down clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(VENV)/.installed: pyproject.toml $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -c $(DEV_LOCK) -e ".[cpu,train,bench,dev]"
	touch $@

venv: $(VENV)/.installed ## create the virtual environment (CPU torch and onnxruntime, no CUDA download)

# Keeps the versions already locked unless pyproject.toml rules them out; `make lock LOCK_ARGS=--upgrade`
# moves everything to the newest allowed. A CUDA package in dev.lock fails the target.
lock: venv ## regenerate requirements/serve.lock (service image) and requirements/dev.lock (venv, CI) from pyproject.toml
	$(LOCK) --extra cpu -o $(SERVE_LOCK) pyproject.toml
	$(LOCK) --extra cpu --extra train --extra bench --extra dev --upgrade-package "$(TORCH)" -o $(DEV_LOCK) pyproject.toml
	@! grep -iE '^(nvidia|triton|cuda)' $(DEV_LOCK) || { echo "lock: CUDA packages in $(DEV_LOCK)"; exit 1; }

system-deps: ## install the Debian packages the tests need (redis-server, prometheus, wrk, jq, haproxy), if missing
	bash scripts/system-deps.sh redis-server prometheus wrk jq haproxy

run: venv ## data, training (control + mail), export, and the service on an embedded Redis
	bash scripts/run.sh

test: venv system-deps ## the whole test suite
	$(PY) -m pytest

test-fast: venv system-deps ## the suite without the `slow` tests (real-data training, long fault runs): a few minutes
	$(PY) -m pytest -m "not slow"

lint: venv ## ruff + mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy service model_export benchmarks tests

format: venv
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: bench-offline bench-serve ## every benchmark

bench-offline: venv ## catalog task: MAIL vs popularity, control, oracle; main + onboarding, 5 seeds (about 70 min on 2 cores, not yet timed with mail-own)
	$(PY) -m benchmarks.offline --blocks main,onboarding

bench-offline-all: venv ## catalog task, every block (baselines, paper protocol, Book-Crossing, DIN)
	$(PY) -m benchmarks.offline

bench-offline-quick: venv ## catalog task, main + onboarding at one seed, 1 epoch
	$(PY) -m benchmarks.offline --quick

bench-offline-rating: venv ## issue #6's benchmark on the rating task (the paper comparison)
	$(PY) -m benchmarks.offline --task rating

bench-serve: venv ## load benchmark of the service against the HTTP floor
	bash scripts/system-deps.sh redis-server wrk
	$(PY) -m benchmarks.serving

$(GPU_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_PY) -m pip install -q --disable-pip-version-check -e ".[gpu]" "$(GPU_ORT)"
	touch $@

# The bundle is trained in $(VENV) (torch, CPU) unless $(GPU_BUNDLE) is there already (a bundle
# brought from another machine: then no torch is installed), and checked in $(GPU_VENV).
gpu-check: ## on an NVIDIA machine: CUDA vs CPU, placement, parity, latency, micro-batcher -> benchmarks/results/gpu.md
	@if ! nvidia-smi -L >/dev/null 2>&1; then \
		echo "gpu-check: no NVIDIA GPU here (nvidia-smi finds none): nothing measured, nothing written"; \
	else \
		{ [ -f $(GPU_BUNDLE)/manifest.json ] || { $(MAKE) --no-print-directory $(VENV)/.installed \
			&& $(PY) -m benchmarks.gpu_check --build-bundle $(GPU_BUNDLE); }; } \
		&& $(MAKE) --no-print-directory $(GPU_VENV)/.installed \
		&& $(GPU_PY) -m benchmarks.gpu_check --bundle $(GPU_BUNDLE) $(GPU_CHECK_ARGS); \
	fi

up: ## the docker-compose stack (training job, service, Redis, Prometheus, Grafana)
	docker compose up --build

down:
	docker compose down

clean:
	rm -rf runs bundles .pytest_cache .mypy_cache .ruff_cache
