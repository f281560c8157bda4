# Set-up is part of every target: a fresh machine needs only python3 (3.11) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

## Run every test (unit tests and the smoke-scale training tests).
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Unit tests only (no training).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

## Throughput at the cpu-scale config (run on an idle machine).
benchmark: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
