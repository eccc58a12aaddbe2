# Two commands for a fresh machine: `make run` and `make test`; `make check` is the fast loop.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

# The fast tier: every test without a slow-tier marker (see pyproject.toml).
FAST_TIER := not (redis or browser or matrix or autobahn or soak or slow or backplanes or serial)
export FAST_TIER

.PHONY: run check test lint typecheck pytest pytest-fast matrix docs docs-serve bench system-deps asyncapi-schema autobahn clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is required (set PYTHON=python3.X)"'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev,redis,docs]'
	@touch $@ $(VENV)/.run-installed $(VENV)/.docs-installed

$(VENV)/.docs-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[docs]'
	@touch $@

## Serve the example app on http://127.0.0.1:3000
run: $(VENV)/.run-installed
	$(BIN)/python -m example_app

## Lint, type-check and the fast tier (no Redis, browser, server matrix, soak): the edit loop.
check: lint typecheck pytest-fast

## Lint, type-check, run every test, the fast tier on the other Pythons, build the docs (what CI runs).
test: $(VENV)/.dev-installed system-deps asyncapi-schema lint typecheck pytest matrix docs

system-deps:
	@bash scripts/install-system-deps.sh

## The official AsyncAPI JSON Schemas (npm @asyncapi/specs, locked) for tests/test_asyncapi.py.
asyncapi-schema: tests/asyncapi/node_modules/.package-lock.json

tests/asyncapi/node_modules/.package-lock.json: tests/asyncapi/package.json tests/asyncapi/package-lock.json
	npm ci --prefix tests/asyncapi --no-audit --no-fund --loglevel=error

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy --strict h3_fastapi

pytest: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -ra

# Four workers on two cores: the fast tier mostly waits on sockets and timers, not the CPU.
pytest-fast: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q -n 4 -m "$(FAST_TIER)"

## The fast tier on every other Python 3.10-3.13 found, and on the declared lowest dependencies.
matrix: $(VENV)/.dev-installed
	bash scripts/python-matrix.sh

docs: $(VENV)/.dev-installed
	$(BIN)/mkdocs build --strict --site-dir site

## The docs site on its own port (8000 is the one the getting-started commands use).
docs-serve: $(VENV)/.docs-installed
	$(BIN)/mkdocs serve -a 127.0.0.1:8001

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

autobahn: $(VENV)/.dev-installed
	bash scripts/autobahn.sh

clean:
	rm -rf $(VENV) $(VENV)-3.* $(VENV)-lowest site .mypy_cache .ruff_cache .pytest_cache tests/asyncapi/node_modules
