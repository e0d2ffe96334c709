# `make demo` creates .venv and installs mad; `make test` also installs the test extras. Each only when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mad-installed
TSTAMP := $(VENV)/.mad-test-installed
CACHE  ?= .mad-cache
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

$(TSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(TSTAMP)

install: $(STAMP)

# The demo (`mad demo`): shapes world, shapes-clip features, baseline vs MAD students, the table and its plot.
# A second `make demo` serves every stage from the cache.
demo: $(STAMP)
	$(BIN)/mad demo --cache $(CACHE) --out demo-report

# The suite runs in worker processes (pytest-xdist, one per core, at most 4): most tests wait on real subprocesses.
test: $(TSTAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --durations 15

lint: $(TSTAMP)
	$(BIN)/ruff check .

bench: $(TSTAMP)
	$(BIN)/python bench/extract.py

clean:
	rm -rf $(CACHE) demo-report .pytest_cache .ruff_cache
