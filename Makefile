# QuStream — the two commands a newcomer needs are `make demo` and `make test`.
# Everything is installed from nothing: a Python virtual environment (PyPI) and, on first use,
# Apache Kafka and Apache Cassandra jars (Maven Central) under .qustream/.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
PYTEST_ARGS ?=
WEB     = services/gateway/web
# The explorer's assets: npm ci against the committed lock file, then esbuild (web/build.mjs)
# into web/dist (git-ignored: generated, and Swagger UI alone is 2 MB).
WEB_STAMP = $(WEB)/dist/.built
WEB_SOURCES = $(WEB)/package-lock.json $(WEB)/build.mjs $(WEB)/index.html $(WEB)/docs.html \
              $(wildcard $(WEB)/src/*.js $(WEB)/src/*/*.js $(WEB)/src/*.css)

.PHONY: help install tools browser demo test test-unit lint lint-k8s soak bench clean

help:
	@echo "make demo   - start the embedded Kafka + Cassandra and run the QuStream network"
	@echo "make test   - install everything, start what the tests need, run every test"
	@echo "make lint   - ruff, mypy and the import-linter contracts"
	@echo "make lint-k8s - render the Helm chart and validate it offline (part of make test)"
	@echo "make soak   - the long load and fault runs (not part of make test)"
	@echo "make bench  - every benchmark under bench/ (each prints a JSON line)"

$(STAMP): pyproject.toml
	@command -v java >/dev/null || { echo "Java 17 is required (a JDK: the tests compile a small Java program): apt-get install openjdk-17-jdk-headless"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required: apt-get install maven"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

$(WEB_STAMP): $(WEB_SOURCES)
	@command -v node >/dev/null && command -v npm >/dev/null || { echo "Node.js 18+ and npm are required (the explorer's assets): apt-get install nodejs npm"; exit 1; }
	cd $(WEB) && npm ci --no-audit --no-fund && npm run build
	@touch $(WEB_STAMP)

install: $(STAMP) $(WEB_STAMP)

# Debian's Chromium and its WebDriver, for the explorer's browser tests (tests/browser).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

demo: $(STAMP) $(WEB_STAMP)
	$(BIN)/qustream demo

# Helm is built once from the Go module proxy (pinned; see infra/k8s/install_tools.sh).
tools: $(STAMP)
	bash infra/k8s/install_tools.sh

# Render the Helm chart for both values files and validate every object offline.
lint-k8s: tools
	$(BIN)/python -m infra.k8s.validate
	$(BIN)/python -m infra.docker.lint

# Our modules' bytecode, written once: the tests start hundreds of processes (services, CLI
# runs), and where PYTHONDONTWRITEBYTECODE is set each would compile every module it imports.
BYTECODE = $(BIN)/python -m compileall -q -j 0 protocol streams services sdk bench infra schemas tests

test: $(STAMP) $(WEB_STAMP) browser lint-k8s
	$(BYTECODE)
	$(BIN)/python -m pytest --ignore=tests/soak $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP) $(WEB_STAMP)
	$(BIN)/ruff check .
	cd $(WEB) && npm run --silent typecheck
	$(BIN)/mypy protocol streams services sdk infra bench
	$(BIN)/lint-imports

soak: $(STAMP)
	$(BYTECODE)
	$(BIN)/python -m pytest tests/soak -v $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in bench/*.py; do n=$$(basename $$b .py); [ "$$n" = "__init__" ] || [ "$$n" = "common" ] || $(BIN)/python -m bench.$$n; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache $(WEB)/node_modules $(WEB)/dist
