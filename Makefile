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
demo: setup
	$(ENV) && python -m cleanpose_tools.demo $(ARGS)

# The CI set: everything except slow and GPU tests. pytest exits 5 when nothing was collected, which fails too.
test: setup
	$(ENV) && $(TEST_ENV) $(PYTEST) -m "not slow and not gpu" $(ARGS)

# Including the slow tests (GPU tests still skip themselves without CUDA).
test-all: setup
	$(ENV) && $(TEST_ENV) $(PYTEST) -m "not gpu" $(ARGS)

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
