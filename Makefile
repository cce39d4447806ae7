# Two commands do everything: `make test` and `make figures` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast imports figures gpu-check lab lint clean

$(STAMP): pyproject.toml constraints.txt scripts/post_install.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e ".[notebooks,test]"
	# TorchRay without its dependencies, WordNet (the conda route runs the same script)
	$(BIN)/python scripts/post_install.py
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP) imports
	$(BIN)/python -m pytest

imports: $(STAMP)
	$(BIN)/lint-imports --no-cache

test-fast: $(STAMP) imports
	$(BIN)/python -m pytest -m "not slow"

figures: $(STAMP)
	$(BIN)/python scripts/run_notebooks.py

# every method on the GPU against the CPU, leaks, speed, full step counts (see the script)
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

lint: $(STAMP)
	$(BIN)/ruff check xai_utils tests benchmarks scripts

clean:
	rm -rf build .pytest_cache
