# Two commands on a fresh machine:  `make run` (set up, then solve and trace on the testbed) and
# `make test` (set up, then the whole test suite). Everything lives in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup run test check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/ttc strategies
	$(BIN)/ttc solve "$(QUESTION)" --reference "$(ANSWER)" --strategy beam --budget 16 --run-name "demo-$$(date +%s)"
	$(BIN)/ttc trace

test: setup
	$(BIN)/python -m pytest

check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/node_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

QUESTION ?= Compute (17 + 25) * 3 - 48.
ANSWER ?= 78
