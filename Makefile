# `make demo` and `make test` each create .venv and install the project (with its test extras) when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.mad-installed
CACHE  ?= .mad-cache
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job: extract token-level features of the bundled photos with the bundled shapes-clip teacher.
demo: $(STAMP)
	$(BIN)/mad teachers
	$(BIN)/mad extract --teacher shapes-clip --text-teacher minilm --manifest examples/photos/manifest.jsonl \
		--data-root examples/photos --cache $(CACHE)
	$(BIN)/mad store ls --cache $(CACHE)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/extract.py

clean:
	rm -rf $(CACHE) .pytest_cache .ruff_cache
