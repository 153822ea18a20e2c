# Every target sets up whatever is missing first (scripts/setup.sh is idempotent and fast when done), then runs
# inside the environment of scripts/env.sh (venv + colcon overlay with the interface packages).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
ENV := source scripts/env.sh
PYTEST := python -m pytest
# Overlay import failures must fail these runs rather than skip (see test/conftest.py).
TEST_ENV := CLEANPOSE_REQUIRE_ROS=1
ARGS ?=

.PHONY: setup demo test test-all lint format bench clean-build

setup:
	bash scripts/setup.sh

# The main job on the embedded default (demo checkpoint + synthetic rosbag): the node replayed a recorded bag.
# ARGS="--family selfsup" serves the self-supervised demo checkpoint (models/selfsup_demo/, docs/selfsup.md).
demo: setup
	$(ENV) && python -m cleanpose_tools.demo $(ARGS)

# The CI set: everything except slow and GPU tests. pytest exits 5 when nothing was collected, which fails too.
test: setup
	$(ENV) && $(TEST_ENV) $(PYTEST) -m "not slow and not gpu" $(ARGS)

# Every test: slow ones and, where torch sees CUDA, the GPU ones. pyproject.toml's addopts deselect `gpu` for
# plain pytest runs, so this target selects all markers explicitly; without CUDA test/conftest.py marks the GPU
# tests skipped (pytest -ra lists them), so the run says what it did not cover.
test-all: setup
	$(ENV) && if python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then \
		echo "make test-all: CUDA found, the GPU tests run too"; \
	else \
		echo "make test-all: no CUDA device, the GPU tests are collected and skipped"; \
	fi && $(TEST_ENV) $(PYTEST) -m "gpu or not gpu" $(ARGS)

lint: setup
	$(ENV) && ruff check . && ruff format --check .

format: setup
	$(ENV) && ruff check --fix . && ruff format .

# Rosbag replay benchmark of the node (see README); pass options with ARGS="...".
bench: setup
	$(ENV) && cleanpose-bench $(ARGS)

# Drop the colcon overlay so the next target rebuilds it (the venv stays).
clean-build:
	rm -rf build/ros_ws
