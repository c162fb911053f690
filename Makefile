# Everything a fresh machine needs is set up here: the virtualenv, the dependencies, Debian's
# chromium (for the approval inbox's browser tests) and the Kafka broker's jars (fetched once
# from Maven Central into the cache). Set BATON_BOOTSTRAP to use an existing cluster instead of
# the local broker.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM_STAMP := $(VENV)/.chromium

.PHONY: setup demo test check lint types unit integration chaos bench clean

# The example step kind (examples/baton-sentiment) is installed beside baton, in one resolve so
# that its `baton` requirement is this checkout: the tests run it as every worker would.
EXAMPLE_KIND := examples/baton-sentiment

$(STAMP): pyproject.toml $(EXAMPLE_KIND)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' -e $(EXAMPLE_KIND)
	touch $@

# Playwright drives Debian's chromium package (/usr/bin/chromium); it never downloads browsers.
$(CHROMIUM_STAMP): | $(STAMP)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)
	touch $@

setup: $(STAMP) $(CHROMIUM_STAMP)
	$(BIN)/baton kafka fetch

demo: setup
	$(BIN)/baton demo

check: lint types

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy $(EXAMPLE_KIND)/src $(EXAMPLE_KIND)/tests

test: setup check
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/stream

integration: setup
	$(BIN)/pytest tests/integration

# The fault suite (docs/operations.md), bounded, under both guarantees (make test runs it
# under exactly-once). A soak:
# make chaos BATON_CHAOS_RUNS=5000 BATON_CHAOS_MINUTES=16 (BATON_CHAOS_FAULTS, and
# BATON_CHAOS_REPORT=dir for the JSON figures).
chaos: setup
	BATON_CHAOS_GUARANTEES=$${BATON_CHAOS_GUARANTEES:-exactly_once,at_least_once} \
		$(BIN)/pytest -m chaos tests/integration/test_chaos.py

bench: setup
	$(BIN)/baton bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
