# kdnas: `make run` (main job end to end on the bundled data) and `make test` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install.stamp
RUN_ARGS ?=

.PHONY: help install run test test-fast lint bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,export,cluster]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install kdnas with its dev/export/cluster extras (idempotent)

run: install  ## the DisWOT pipeline (teacher -> search -> distill winner) on the bundled data, a few minutes on CPU
	$(BIN)/kdnas experiment=quickstart $(RUN_ARGS)

test: install  ## the whole test suite (CPU, < 15 min), slow end-to-end tests included
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -ra

test-fast: install  ## the suite without the slow end-to-end tests
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -ra -m "not slow"

lint: install  ## ruff
	$(BIN)/ruff check src tests scripts

bench: install  ## throughput benchmarks (ratios measured in one run)
	$(BIN)/python scripts/bench_train.py

clean:  ## remove the venv and caches (not outputs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache
