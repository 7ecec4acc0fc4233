# Everything runs from the lock file through uv, which this Makefile installs itself,
# so `make demo` and `make test` work on a machine with only Python 3.11+ and make.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Compile the packages' bytecode once, at install: otherwise the first test run's parallel workers
# each compile botocore, moto and pydantic again (a fresh clone's first `make test` took a minute longer).
export UV_COMPILE_BYTECODE := 1
# The package managers the tests run for real (pnpm, yarn 1.x), at the versions tests/tools pins.
NODE_TOOLS := var/tools
# pytest-xdist workers: the suite mostly waits on child processes and local servers, so more
# workers than cores keep both cores busy (measured: see README, "Running the tests").
PYTEST_WORKERS ?= 4

.PHONY: demo test lint typecheck pytest tools bench clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

## demo: a local app goes down and recovers while the daemon watches; then history and uptime
demo: $(VENV)/.synced
	@mkdir -p var && rm -rf var/demo.db* var/backups var/reports var/status
	OPSKEEPER_LEDGER=var/demo.db $(VENV)/bin/python -m worker.demo

## test: lint, type-check and run the whole test suite, with the package managers it runs; prints its wall time
test:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory lint typecheck pytest; code=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s wall time"; exit $$code

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.synced
	$(VENV)/bin/mypy

pytest: $(VENV)/.synced tools
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist worksteal

## tools: pnpm and yarn 1.x from the npm registry into var/tools, as tests/tools/package-lock.json pins them
# `npm install` from the lockfile, not `npm ci`: npm 11 leaves pnpm's optional per-platform
# binaries of other platforms out of the lockfile and then `npm ci` refuses it ("Missing:
# @pnpm/exe.android-arm64"). Both pins are exact and the lockfile's integrity is checked.
# Install scripts run: pnpm's puts its native binary in place of a shebang-less placeholder
# that only a shell can run (the tests exec pnpm as opskeeper does, with no shell).
tools: $(NODE_TOOLS)/.installed

$(NODE_TOOLS)/.installed: tests/tools/package.json tests/tools/package-lock.json
	@if command -v npm >/dev/null; then \
	  mkdir -p $(NODE_TOOLS) && cp tests/tools/package.json tests/tools/package-lock.json $(NODE_TOOLS)/ && \
	  npm install --prefix $(NODE_TOOLS) --no-audit --no-fund --loglevel=error && touch $@; \
	else \
	  echo "make tools: npm is not on PATH: the pnpm and yarn tests will be skipped (as root: apt-get install nodejs npm)"; \
	fi

## bench: idle daemon, health probe, backup, restore, point-in-time recovery, dependency, review, status page, fail-over and Sentry volume figures (about 50 minutes)
bench: $(VENV)/.synced tools
	$(VENV)/bin/python bench/idle.py
	$(VENV)/bin/python bench/probe.py
	$(VENV)/bin/python bench/pipeline.py
	$(VENV)/bin/python bench/backup.py
	$(VENV)/bin/python bench/restore.py
	$(VENV)/bin/python bench/pitr.py
	$(VENV)/bin/python bench/startup.py
	$(VENV)/bin/python bench/deps.py
	$(VENV)/bin/python bench/updates.py
	$(VENV)/bin/python bench/review.py
	$(VENV)/bin/python bench/status.py
	$(VENV)/bin/python bench/failover.py
	$(VENV)/bin/python bench/sentry_volume.py
	$(VENV)/bin/python bench/rollback.py

clean:
	rm -rf $(TOOLS) $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
