# The README's two commands: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast bench lint format contracts clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned to the CPU wheel where it exists: a bare `torch` pulls a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0" || echo "torch==2.13.0 not available here; pip will resolve torch from pyproject.toml"
	$(BIN)/pip install -q -e ".[ml,registry,dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/lmesh demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs contracts

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

contracts: $(STAMP)
	$(BIN)/python -m contracts.export
	$(BIN)/python -m services.openapi

clean:
	rm -rf $(VENV) .lmesh .pytest_cache .mypy_cache .ruff_cache
