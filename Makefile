# Unwind: `make run` serves the demo, `make test` runs the tests. Needs only Python >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# The demo's loopback targets (demo/targets.py); seed_demo points the demo estate at them.
DEMO_TARGETS_PORT ?= 9100

.PHONY: run test lint format lock demo-data clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Unwind needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)

# The project itself is installed too (editable, no dependencies: the lock has them) for its
# console script, the `unwind` command line (docs/cli.md).
$(VENV)/.run-installed: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements-dev.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@ $(VENV)/.run-installed

## run: install, migrate, load the demo estate and users, then serve web + worker + beat +
## the demo's loopback targets until Ctrl-C (embedded defaults: SQLite, filesystem broker).
run: export DEBUG ?= 1
run: export TARGET_DATABASE_ORDERS ?= sqlite:///$(CURDIR)/var/demo-orders.sqlite3
run: export DEMO_TARGETS_PORT := $(DEMO_TARGETS_PORT)
run: export DEMO_TARGETS_URL := http://127.0.0.1:$(DEMO_TARGETS_PORT)
run: $(VENV)/.run-installed
	$(BIN)/python manage.py migrate --no-input -v 0
	$(BIN)/python manage.py seed_demo
	rm -rf "$${UNWIND_VAR_DIR:-var}/prometheus"  # the last run's metrics files (docs/metrics.md)
	@echo "Unwind on http://127.0.0.1:$(PORT)/  (logins in README.md; Ctrl-C stops everything)"
	exec env BIN_DIR=$(abspath $(BIN)) $(BIN)/honcho start -f Procfile.demo -p $(PORT)

## test: the whole suite (SQLite and no Redis by default; .ci/run points it at PostgreSQL and Redis),
## in PYTEST_WORKERS pytest-xdist processes (tests/isolation.py; 0 runs it in one process).
PYTEST_WORKERS ?= 2
test: export DEBUG ?= 1
test: $(VENV)/.dev-installed
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: export DEBUG ?= 1
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## lock: re-pin every dependency from pyproject.toml (needs pip-tools in the venv).
lock: $(VENV)/.dev-installed
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile -q --no-emit-index-url --no-emit-find-links --strip-extras -o requirements.lock pyproject.toml
	$(BIN)/pip-compile -q --no-emit-index-url --no-emit-find-links --strip-extras --extra dev -o requirements-dev.lock pyproject.toml

clean:
	rm -rf var .pytest_cache .ruff_cache .hypothesis
