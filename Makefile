# Everything installs into .venv inside the checkout; system packages come from apt.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
# Test files run in parallel on PYTEST_WORKERS workers, each file whole on one worker (its
# module-scoped servers stay shared); 0 runs them serially in one process.
PYTEST_WORKERS ?= 2

.PHONY: help demo up down test test-unit test-integration bench lint lock clean system-deps test-services venv

help: ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

demo: venv system-deps ## back up and restore a sample PostgreSQL database and a file tree with Airflow
	$(PY) scripts/demo.py

# `make up EXECUTOR=celery WORKERS=2`: CeleryExecutor with Redis and N workers.
EXECUTOR ?= local
WORKERS ?= 2

up: venv system-deps ## start Airflow with the UI on http://127.0.0.1:8080 (EXECUTOR=celery WORKERS=2 for Celery)
	$(PY) scripts/up.py up --executor $(EXECUTOR) --workers $(WORKERS)

down: ## stop everything `make up` started (and nothing else)
	$(PY) scripts/up.py down

test: venv system-deps test-services ## install what the tests need and run them (what CI runs)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile

test-unit: venv ## unit tests only
	$(PY) -m pytest tests/unit tests/dags

bench: venv system-deps test-services ## run the benchmarks (on demand; figures are printed)
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_parse.py
	$(PY) bench/bench_task_start.py
	$(PY) bench/bench_pg_dump.py
	$(PY) bench/bench_pg_restore.py
	$(PY) bench/bench_pitr.py
	$(PY) bench/bench_targets.py
	$(PY) bench/bench_mongo.py --docs 200000
	$(PY) bench/bench_scheduler.py

lint: venv ## ruff and mypy
	$(VENV)/bin/ruff check include dags plugins tests scripts bench
	$(VENV)/bin/ruff check --preview --select AIR include dags plugins
	$(VENV)/bin/mypy include/backup

lock: ## re-pin requirements*.txt from requirements*.in
	$(VENV)/bin/uv pip compile --python-version 3.11 --python-platform x86_64-unknown-linux-gnu requirements.in -o requirements.txt
	$(VENV)/bin/uv pip compile --python-version 3.11 --python-platform x86_64-unknown-linux-gnu requirements-dev.in -c requirements.txt -o requirements-dev.txt

venv: $(VENV)/.installed

# The project itself goes in editable (pyproject.toml), so `include.backup` imports from any
# directory and in every Airflow process without PYTHONPATH; its setuptools comes from
# requirements.txt (--no-build-isolation: nothing is fetched to build it).
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install --python $(PY) -r requirements.txt -r requirements-dev.txt
	$(VENV)/bin/uv pip install --python $(PY) --no-deps --no-build-isolation -e .
	touch $@

# PostgreSQL server binaries (the demo and tests start their own throwaway cluster), zstd and
# redis-server (the Celery broker of `make up EXECUTOR=celery` and tests/e2e/test_celery.py),
# chromium (the DR page browser tests, driven by playwright with executable_path=/usr/bin/chromium).
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v zstd >/dev/null || ! command -v redis-server >/dev/null || ! command -v chromium >/dev/null; then \
	  echo "installing postgresql, zstd, redis-server and chromium with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql zstd redis-server chromium; \
	fi

# The servers the integration tests start on 127.0.0.1: sshd (apt), Azurite (npm, into
# tests/services/azurite from its lock file there); the Python ones (moto, GCS emulator,
# pyftpdlib, aiosmtpd, SecantusDB) come with the venv.
test-services: venv
	bash scripts/install-test-services.sh

clean: ## remove the venv, the demo, make up's .run, the local Airflow home and the npm-installed test servers
	rm -rf $(VENV) .demo .airflow .run .pytest_cache tests/services/azurite/node_modules
