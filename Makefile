# The README's two commands: `make demo` and `make test`. Each makes .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: install demo test test-fast lint format bench clean up down status

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The CPU build of torch first (a file on this machine's disk): a range that let pip
	# pick a newer torch would pull a several-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

# The whole loop with embedded defaults, from an empty data folder (DEMO_ARGS=--quick: CI's size).
demo: install
	$(BIN)/banditflow demo --fresh $(DEMO_ARGS)

# Two workers (the machine has two cores), one test file per work unit: see tests/conftest.py.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not integration"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy contract banditflow flows tasks rollout benchmarks

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The local stack on 127.0.0.1: Prefect server + worker, MLflow UI, rollout service.
# PROFILE=scaled: PostgreSQL, Redis, a Dask cluster and two replicas behind HAProxy.
PROFILE ?= local
up: install
	$(BIN)/banditflow up --profile $(PROFILE) $(UP_ARGS)

down:
	$(BIN)/banditflow down

status:
	$(BIN)/banditflow status

clean:
	rm -rf .banditflow
