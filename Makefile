# leukoflow: `make run` sets up and runs the demo workflow, `make test` sets up and runs the tests.
# The virtualenv is keyed on the hash of requirements.lock: reuse is instant while the pins are
# unchanged, a changed pin rebuilds it from scratch.

PYTHON ?= python3
VENV ?= .venv
CORES ?= 8
# pytest-xdist workers for `make test`/`make test-fast`: one per core of the 2-core CI machine.
TEST_WORKERS ?= 2
LOCK_HASH := $(shell sha256sum requirements.lock | cut -c1-16)
PKG_HASH := $(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
ENV_STAMP := $(VENV)/.lock-$(LOCK_HASH)
PKG_STAMP := $(VENV)/.pkg-$(PKG_HASH)
BIN := $(VENV)/bin

.PHONY: setup run test test-fast lint format-check docs rulegraph mlflow-ui clean-results

setup: $(PKG_STAMP)

# pip byte-compiles ~19k files one by one; compileall does it on every core. Compiled here, not at
# first import: with PYTHONDONTWRITEBYTECODE set, every job would compile torch again. Its status is
# ignored as pip ignores it: some packages ship files for newer Pythons (torch's py312_intrinsics).
$(ENV_STAMP):
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile -r requirements.lock
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

$(PKG_STAMP): $(ENV_STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.pkg-*
	touch $@

# The report is rendered in the run's working directory (its runtime statistics come from .snakemake/).
run: setup
	$(BIN)/snakemake --cores $(CORES) --report results/report.html --report-after-run

# `make test` is the whole suite (CI); `make test-fast` the unit tier: no snakemake run, no
# training beyond a few steps (markers e2e and slow, see tests/conftest.py), under 2 minutes.
# Whole test files go to one worker each (their module fixtures run once), heaviest first
# (tests/conftest.py orders them); the shared tiny run is built once for all workers.
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: setup
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test-fast: setup
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not e2e and not slow"

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

docs: setup
	$(BIN)/python -m leukoflow.engine.docs

# docs/rulegraph.svg (embedded in README.md) needs graphviz's `dot`; tests/test_docs.py checks it lists every rule.
rulegraph: setup
	$(BIN)/snakemake --rulegraph | dot -Tsvg > docs/rulegraph.svg

mlflow-ui: setup
	$(BIN)/mlflow ui --host 127.0.0.1 --backend-store-uri sqlite:///results/mlflow.db

clean-results:
	rm -rf results/* .snakemake logs benchmarks && touch results/.gitkeep
