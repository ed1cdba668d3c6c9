VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

# The front-end (demo app and admin UI): sources in web/, built by vite into package data
# (src/tidings/web/<app>/, not committed). Rebuilt when missing or older than its sources.
NPM ?= npm
WEB_SOURCES := $(shell find web -path web/node_modules -prune -o -type f -print 2>/dev/null)
WEB_DEPS := web/node_modules/.installed
WEB_BUILT := src/tidings/web/.built
WEB_APPS := src/tidings/web/demo/index.html src/tidings/web/admin/index.html

HAVE_NPM := $(shell command -v $(NPM) 2>/dev/null)

.PHONY: install web run run-web test lint types check docs clean clean-web

# Running the hub needs the package alone; the tests and tools need the test and docs extras.
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP) $(RUN_STAMP)

install: $(STAMP)

$(WEB_DEPS): web/package.json web/package-lock.json
	cd web && $(NPM) ci --no-audit --no-fund
	touch $(WEB_DEPS)

$(WEB_BUILT): $(WEB_DEPS) $(WEB_SOURCES)
	cd web && $(NPM) run build
	touch $(WEB_BUILT)

# The centrifuge-js SDK (in Node) for tests/e2e/test_sdk_js.py.
E2E_JS_DEPS := tests/e2e/js/node_modules/.installed

$(E2E_JS_DEPS): tests/e2e/js/package.json tests/e2e/js/package-lock.json
	cd tests/e2e/js && $(NPM) ci --no-audit --no-fund
	touch $(E2E_JS_DEPS)

# An app folder removed by hand (the stamp still there) is built again too.
web: $(WEB_BUILT)
	@for f in $(WEB_APPS); do test -f $$f || { rm -f $(WEB_BUILT); $(MAKE) --no-print-directory $(WEB_BUILT); break; }; done

# Without npm the hub still runs, without the web apps unless they were built before.
ifeq ($(HAVE_NPM),)
run-web:
	@for f in $(WEB_APPS); do test -f $$f || { echo "make: $(NPM) not found: the demo and admin UI are not built; install Node >= 20.19 to get them"; break; }; done
else
run-web: web
endif

run: $(RUN_STAMP) run-web
	$(BIN)/tidings serve --dev

test: install web $(E2E_JS_DEPS)
	$(BIN)/ruff check setup.py src tests examples
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The fast tests (under a minute), on every core (pytest-xdist): without the tests marked
# slow, browser, e2e or soak (see tests/conftest.py). `make test` runs them all, two
# modules at a time (each module's tests on one worker: module fixtures start once).
check: install web
	$(BIN)/ruff check setup.py src tests examples
	$(BIN)/python -m pytest -q -n auto -m "not slow and not browser and not e2e and not soak"

# The documentation site (mkdocs.yml), into site/, with warnings as errors; `make test`
# builds it too (tests/test_docs.py). The variable silences mkdocs-material's banner.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check setup.py src tests examples
	$(BIN)/ruff format --check setup.py src tests

types: install
	$(BIN)/mypy

clean: clean-web
	rm -rf $(VENV) build dist site src/*.egg-info .mypy_cache .pytest_cache .ruff_cache

clean-web:
	rm -rf src/tidings/web web/node_modules

# --- benchmark suite (bench/README.md) ---------------------------------------------------
BENCH_VENV := bench/.venv-peers
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: bench bench-quick bench-build bench-deps bench-brokers

bench/build/wsbench: bench/loadgen/wsbench.c bench/loadgen/common.h
	mkdir -p bench/build
	gcc -O2 -Wall -Wextra -o $@ bench/loadgen/wsbench.c -lm

bench/build/wsblast: bench/loadgen/wsblast.c bench/loadgen/common.h
	mkdir -p bench/build
	gcc -O2 -Wall -o $@ bench/loadgen/wsblast.c

bench-build: bench/build/wsbench bench/build/wsblast

$(BENCH_STAMP): bench/requirements-peers.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r bench/requirements-peers.txt
	touch $(BENCH_STAMP)

bench/node_modules/.package-lock.json: bench/package.json bench/package-lock.json
	cd bench && npm ci --no-audit --no-fund

bench-deps: install $(BENCH_STAMP) bench/node_modules/.package-lock.json

bench: bench-build bench-deps
	$(BENCH_VENV)/bin/python bench/run.py

bench-quick: bench-build bench-deps
	$(BENCH_VENV)/bin/python bench/run.py --quick

# Fan-out and publishes/s over the memory, Redis and NATS brokers (bench/README.md).
bench-brokers: install bench/build/wsbench $(BENCH_STAMP)
	$(BIN)/python bench/brokers.py

# 100,000 connections over Redis and NATS (bench/README.md, `make scale`; not part of `make test`).
.PHONY: scale
scale: install bench/build/wsbench
	$(BIN)/python bench/scale.py

# Coverage-guided fuzzing of the frame decoder and the session (atheris, see fuzz/README.md).
# FUZZ_IGNORE names exceptions of known, reported bugs the fuzzer should go past.
FUZZ_TIME ?= 600
FUZZ_CORPUS ?= fuzz/corpus
FUZZ_IGNORE ?=

.PHONY: fuzz
fuzz: install
	$(BIN)/python -c "import atheris" 2>/dev/null || $(BIN)/python -m pip install --quiet atheris
	mkdir -p $(FUZZ_CORPUS)
	TIDINGS_FUZZ_IGNORE=$(FUZZ_IGNORE) $(BIN)/python fuzz/fuzz_decode.py \
		-dict=fuzz/json.dict -max_total_time=$(FUZZ_TIME) -max_len=8192 \
		-artifact_prefix=fuzz/ $(FUZZ_CORPUS)

# --- soak and fault tests (soak/README.md, docs/reliability.md) --------------------------
# `make test` runs tests/test_faults.py with a 2,000-client reconnect storm and a 60 s soak;
# these run the full sizes: a 600 s soak (SOAK_SECONDS=...) and a 10,000-client storm.
SOAK_SECONDS ?= 600
STORM_CLIENTS ?= 10000

.PHONY: soak storm

soak: install
	$(BIN)/python soak/run.py --seconds $(SOAK_SECONDS); soak=$$?; \
	TIDINGS_STORM_CLIENTS=$(STORM_CLIENTS) $(BIN)/python -m pytest tests/test_faults.py \
		-q -s -p no:cacheprovider -k a_reconnect_storm_is_served; storm=$$?; \
	test $$soak -eq 0 -a $$storm -eq 0

storm: install
	TIDINGS_STORM_CLIENTS=$(STORM_CLIENTS) $(BIN)/python -m pytest tests/test_faults.py \
		-q -s -p no:cacheprovider -k a_reconnect_storm_is_served
