# bcd-cli: `make run` trains the default model, `make test` runs the test suite.
# Both create the virtual environment .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=
STAMP  := $(shell date +%Y-%m-%d/%H-%M-%S)
# the folder `make report` regenerates: DIR=..., or the newest multirun or figure1 folder
DIR    ?= $(shell ls -dt outputs/figure1/*/* outputs/sweep/*/* outputs/search/*/* outputs/multirun/*/* 2>/dev/null | head -1)
# the folder of `make search`: a new one, or an existing search's folder to continue it
SEARCH ?= outputs/search/$(STAMP)

.DEFAULT_GOAL := help
.PHONY: help run test test-process test-all figure1 sweep search report bench lint clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/bcd-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test,launchers,tracking]'
	@touch $@

run: $(BIN)/bcd-train  ## train the default model (digits, three-splitting BCD); extra overrides in ARGS="..."
	$(BIN)/bcd-train $(ARGS)

test: $(BIN)/bcd-train  ## run the test suite without the slow and process tiers, one worker per core (GPU tests skip without CUDA)
	$(BIN)/python -m pytest -n auto --dist worksteal -m "not slow and not process" --durations=15 $(ARGS)

test-process: $(BIN)/bcd-train  ## run the tests that launch bcd-train as a process of its own (signals, exit statuses, launchers)
	$(BIN)/python -m pytest -n auto --dist worksteal -m "process and not slow" --durations=15 $(ARGS)

test-all: $(BIN)/bcd-train  ## run every test: the default, process and slow tiers
	$(BIN)/python -m pytest $(ARGS)

# the methods and seeds of `make figure1` (Hydra choices, comma-separated): make figure1 FIG1_SEEDS=0,1
FIG1_TRAINERS ?= bcd,bcd_accelerated,sgd,adam
FIG1_SEEDS    ?= 0,1,2
figure1: $(BIN)/bcd-train  ## the paper's Figure 1 (MNIST, 784-600x10-10): BCD, accelerated BCD, SGD, Adam over seeds; shrink with ARGS="..."
	$(BIN)/bcd-train -m experiment=figure1 trainer=$(FIG1_TRAINERS) seed=$(FIG1_SEEDS) hydra.sweep.dir=outputs/figure1/$(STAMP) $(ARGS)
	@echo "Figure 1: outputs/figure1/$(STAMP)/comparison.png, comparison.md"

sweep: $(BIN)/bcd-train  ## a gamma x alpha grid on digits: sweep_summary.csv and heatmap.png; more overrides in ARGS="..."
	$(BIN)/bcd-train -m gamma=0.1,1,10 alpha=0.1,1,10 hydra.sweep.dir=outputs/sweep/$(STAMP) $(ARGS)
	@echo "Sweep report: outputs/sweep/$(STAMP)/sweep_summary.csv, heatmap.png"

search: $(BIN)/bcd-train  ## an Optuna search of 30 trials over gamma and alpha on digits (log scales); continue a stopped one: make search SEARCH=outputs/search/...
	$(BIN)/bcd-train -m hydra/sweeper=optuna 'gamma=tag(log, interval(0.01, 100))' 'alpha=tag(log, interval(0.1, 100))' \
		hydra.sweeper.n_trials=30 hydra.sweeper.seed=0 hydra.sweep.dir=$(SEARCH) $(ARGS)
	@echo "Search report: $(SEARCH)/study_trials.csv, study_best.json, study_history.png"

report: $(BIN)/bcd-train  ## regenerate every report of a run or multirun folder: make report DIR=outputs/... (default: the newest)
	$(BIN)/bcd-report $(DIR)

bench: $(BIN)/bcd-train  ## seconds per BCD sweep against the GEMM rate and a naive implementation, memory (ARGS="--quick": one small case)
	$(BIN)/python scripts/bench_sweep.py $(ARGS)

lint: $(BIN)/bcd-train  ## ruff on the package, tests and scripts; mypy on the package
	$(BIN)/ruff check bcd_cli tests scripts
	$(BIN)/ruff format --check bcd_cli tests scripts
	$(BIN)/mypy bcd_cli

clean:  ## remove the virtual environment and caches (outputs/ is kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist
