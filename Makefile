# bnn-lightning: `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export BNN_DATA_DIR ?= $(abspath ../shared/data)
export WANDB_MODE ?= offline
PYTEST_ARGS ?=
# make train TRAIN_ARGS="--seed_everything 1 --trainer.max_epochs 6": more `bnn fit` arguments
TRAIN_ARGS ?=

.PHONY: help install test test-all lint format train bench bench-quick gpu-check gpu-bundle clean

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -c "from bnn_lightning import fused_cpu; fused_cpu.kernels()"  # build the CPU kernels once
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with dev extras (quick when done).

test: install ## Run the fast test suite (no `slow` tests).
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install ## Run every test, `slow` ones included.
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install ## ruff check, ruff format --check, mypy on the package.
	$(VENV)/bin/ruff check bnn_lightning tests benchmarks notebooks
	$(VENV)/bin/ruff format --check bnn_lightning tests benchmarks notebooks
	$(VENV)/bin/mypy

format: install ## Apply ruff fixes and formatting.
	$(VENV)/bin/ruff check --fix bnn_lightning tests benchmarks notebooks
	$(VENV)/bin/ruff format bnn_lightning tests benchmarks notebooks

train: install ## Quickstart: a fully binary ResNet-10 on CIFAR-10 (6-9 min on 2 cores with bf16, 27 without).
	$(VENV)/bin/bnn fit --config configs/cifar10/quickstart.yaml $(TRAIN_ARGS)

bench: install ## Run the benchmarks; writes benchmarks/results/<date>.{json,md,png}.
	$(PY) benchmarks/run.py

bench-quick: install ## Smaller benchmarks, no compile, no quickstart training (a few minutes).
	$(PY) benchmarks/run.py --quick

# On the GPU machine without a package index: `make gpu-check OFFLINE=1` runs its own python3 (with
# its CUDA build of torch) and installs what that lacks from .gpu/wheels (README, "GPU").
OFFLINE ?=
GPU_CHECK_ARGS ?=

gpu-check: $(if $(OFFLINE),,install) ## One GPU, under 8 min: CUDA tests, speeds, a 5-min CIFAR-10 run -> benchmarks/results/gpu-<date>.*
	$(if $(OFFLINE),python3,$(PY)) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

gpu-bundle: install ## Fill .gpu/ (CIFAR-10 archive, wheels) for `make gpu-check OFFLINE=1` on a GPU machine.
	$(PY) benchmarks/gpu_check.py --bundle

clean: ## Remove caches, logs and build outputs (keeps .venv).
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info lightning_logs wandb
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
