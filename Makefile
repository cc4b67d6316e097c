# QuStream — the two commands a newcomer needs are `make demo` and `make test`.
# Everything is installed from nothing: a Python virtual environment (PyPI) and, on first use,
# Apache Kafka and Apache Cassandra jars (Maven Central) under .qustream/.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install demo test test-unit test-integration lint soak bench clean

help:
	@echo "make demo   - start the embedded Kafka + Cassandra and run the QuStream network"
	@echo "make test   - install everything, start what the tests need, run every test"
	@echo "make lint   - ruff, mypy and the import-linter contracts"
	@echo "make soak   - the long load and fault runs (not part of make test)"
	@echo "make bench  - every benchmark under bench/ (each prints a JSON line)"

$(STAMP): pyproject.toml
	@command -v java >/dev/null || { echo "Java 17 is required: apt-get install openjdk-17-jre-headless"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required: apt-get install maven"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/qustream demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy streams services sdk infra bench
	$(BIN)/lint-imports

soak: $(STAMP)
	$(BIN)/python -m pytest tests/soak -v $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in bench/*.py; do n=$$(basename $$b .py); [ "$$n" = "__init__" ] || [ "$$n" = "common" ] || $(BIN)/python -m bench.$$n; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
