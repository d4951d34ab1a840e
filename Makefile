# Every target creates .venv when missing and installs what it needs: a machine with
# only Python 3.11 and make is enough.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make demo` needs Ferryman and its runtime dependencies only, not the test tools
RUNTIME_STAMP := $(VENV)/.installed-runtime

.PHONY: demo test test-slow crash-million soak fuzz bench lint typecheck check clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP) $(RUNTIME_STAMP)

$(RUNTIME_STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUNTIME_STAMP)

demo: $(RUNTIME_STAMP)
	$(BIN)/python -m ferryman.demo

# The suite mostly waits on processes it starts (daemons, sandbox apps, databases), so it
# runs in PYTEST_WORKERS processes (pytest-xdist): 3 on this 2-core machine took 5.5 min,
# against 11.5 min in one. PYTEST_WORKERS=0 runs it in this process.
PYTEST_WORKERS ?= 3
test: $(STAMP)
	$(BIN)/ruff check src connectors tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# kill -9 twenty times during a pull of 1,000,000 contacts from a sandbox app into CSV, then
# check the published file holds each record once (about 10-20 minutes, 2.5 GB of memory)
crash-million: $(STAMP)
	FERRYMAN_CRASH_RECORDS=1000000 $(BIN)/python -m pytest -q -s -m slow -p no:cacheprovider tests/e2e/test_crash_million.py

soak: $(STAMP)
	$(BIN)/python -m pytest -q -s -m soak

# Random fuzzing of config loading, every connector's mapping and the webhook intake:
# FUZZ_SECONDS per target (9 targets: 18 minutes by default). `make test` runs a short,
# fixed-seed version of the same targets.
FUZZ_SECONDS ?= 120
fuzz: $(STAMP)
	FERRYMAN_FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m pytest -q -m fuzz -p no:cacheprovider --timeout=0 tests/fuzz

bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check src connectors tests bench
	$(BIN)/ruff format --check src connectors tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var demo-output .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
