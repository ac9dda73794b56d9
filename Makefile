# Developer entry points for the reactor project (GNU make).
# `make help` lists the targets.

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=
CC ?= cc
BENCH_CFLAGS ?= -O2 -Wall -Wextra -Werror -std=gnu11
TEST_VERSIONS ?= 3.10 3.11 3.12 3.13
# test-all: 1 makes a version in TEST_VERSIONS with no interpreter a failure, not a skip (CI).
REQUIRE_VERSIONS ?= 0

VPY := $(VENV)/bin/python

.DEFAULT_GOAL := help
.PHONY: help bootstrap demo test typecheck test-all test-one bench bench-quick bench-tools clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The stamp is refreshed whenever the packaging metadata changes; an
# existing venv is reused, only the install step is repeated.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test,dev]'
	touch $@

bootstrap: $(VENV)/.installed ## create/refresh the venv (VENV=.venv by default)

# The bench extra (matplotlib for the chart, uvloop and gevent as contenders). The tests
# need it too: they run every contender and check the chart (wheels, about 20 s).
$(VENV)/.bench-installed: $(VENV)/.installed
	$(VPY) -m pip install --quiet -e '.[test,dev,bench]'
	touch $@

demo: $(VENV)/.installed ## run examples/multi_server.py
	$(VPY) examples/multi_server.py

test: $(VENV)/.bench-installed ## run pytest (PYTEST_ARGS=...) then mypy
	$(VPY) -m pytest $(PYTEST_ARGS)
	$(VPY) -m mypy

typecheck: $(VENV)/.installed ## run mypy only (config in setup.cfg)
	$(VPY) -m mypy

test-one: $(VENV)/.bench-installed ## run pytest only in VENV (used by test-all)
	$(VPY) -m pytest $(PYTEST_ARGS)

test-all: ## run pytest under every Python in TEST_VERSIONS (.venv-3.X each; REQUIRE_VERSIONS=1: all must exist)
	@failed=""; ran=""; skipped=""; \
	for v in $(TEST_VERSIONS); do \
	  py=""; \
	  if command -v pyenv >/dev/null 2>&1; then \
	    full=$$(pyenv versions --bare 2>/dev/null | grep -E "^$$(echo $$v | sed 's/\./\\./')\.[0-9]+$$" | sort -V | tail -n 1); \
	    if [ -n "$$full" ]; then py="$$(pyenv prefix "$$full")/bin/python$$v"; fi; \
	  fi; \
	  if [ -z "$$py" ] || [ ! -x "$$py" ]; then py=$$(command -v python$$v 2>/dev/null || true); fi; \
	  if [ -z "$$py" ] && [ "$(REQUIRE_VERSIONS)" = 1 ]; then echo "=== Python $$v: not found, FAILED"; failed="$$failed $$v"; continue; fi; \
	  if [ -z "$$py" ]; then echo "=== Python $$v: not found, SKIPPED"; skipped="$$skipped $$v"; continue; fi; \
	  echo "=== Python $$v: $$py"; \
	  if $(MAKE) --no-print-directory test-one PYTHON="$$py" VENV=.venv-$$v PYTEST_ARGS="$(PYTEST_ARGS)"; then \
	    ran="$$ran $$v"; \
	  else \
	    failed="$$failed $$v"; \
	  fi; \
	done; \
	echo "=== passed:$${ran:- none}"; \
	if [ -n "$$skipped" ]; then echo "=== skipped (no interpreter):$$skipped"; fi; \
	if [ -n "$$failed" ]; then echo "=== FAILED:$$failed"; exit 1; fi

bench/build/%: bench/%.c
	@mkdir -p bench/build
	$(CC) $(BENCH_CFLAGS) -o $@ $< -lm

bench-tools: ## build the C load generator and reference server in bench/build
	@if command -v $(CC) >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory bench/build/loadgen bench/build/echo_server; \
	else \
	  echo "no C compiler ($(CC)): the bench uses bench/pyloadgen.py, labelled as such in the report"; \
	fi

bench: $(VENV)/.bench-installed bench-tools ## full benchmark (~35 min): bench/results/<date>.{json,md,png}
	$(VPY) bench/run.py $(BENCH_ARGS)

bench-quick: $(VENV)/.bench-installed bench-tools ## a small subset of the benchmark, under a minute
	$(VPY) bench/run.py --quick $(BENCH_ARGS)

clean: ## remove venvs, caches, egg-info and build output
	rm -rf $(VENV) .venv-* build dist *.egg-info .pytest_cache .mypy_cache
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
