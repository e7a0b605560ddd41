# bcd-cli: `make run` trains the default model, `make test` runs the test suite.
# Both create the virtual environment .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help run test test-all bench lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/bcd-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test]'
	@touch $@

run: $(BIN)/bcd-train  ## train the default model (digits, three-splitting BCD); extra overrides in ARGS="..."
	$(BIN)/bcd-train $(ARGS)

test: $(BIN)/bcd-train  ## run the test suite without the slow tests (GPU tests skip without CUDA)
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

test-all: $(BIN)/bcd-train  ## run every test, slow ones included
	$(BIN)/python -m pytest $(ARGS)

bench: $(BIN)/bcd-train  ## seconds per BCD sweep against the measured GEMM rate (scripts/bench_sweep.py; options in ARGS)
	$(BIN)/python scripts/bench_sweep.py $(ARGS)

lint: $(BIN)/bcd-train  ## ruff on the package, tests and scripts; mypy on the package
	$(BIN)/ruff check bcd_cli tests scripts
	$(BIN)/ruff format --check bcd_cli tests scripts
	$(BIN)/mypy bcd_cli

clean:  ## remove the virtual environment and caches (outputs/ is kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist
