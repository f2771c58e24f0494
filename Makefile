# Two commands do everything on a fresh machine with Python 3.11 and make:
#   make demo   sets up .venv if needed, then runs the whole pipeline on a synthetic competition
#   make test   sets up .venv if needed, then runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The runtimes users have, one pinned list each (runtimes/*.txt, the oldest being the declared lower bounds):
# installed first, then the project; pip must keep them, and every stage must run on them (CI runs this).
RUNTIMES := $(sort $(wildcard runtimes/*.txt))

.PHONY: demo test test-all test-runtimes test-serve test-slow setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/retinopathy pipeline --config demo

# The linter first (ruff, configured in pyproject.toml), then one worker per core, each test file on one worker (so a
# file's fixtures are built once), one thread per worker.
test: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/python -m pytest -n auto --dist loadscope

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''

# RUNTIME_OPTIONS=--discard (CI) keeps one runtime's environment (6 to 8 GB) on disk at a time.
RUNTIME_OPTIONS ?=
test-runtimes: $(STAMP)
	for runtime in $(RUNTIMES); do $(BIN)/python tests/runtime_stack.py $$runtime --trainer $(BIN)/python $(RUNTIME_OPTIONS) || exit 1; done

# The torch-free server in a fresh environment holding only the serve extra (a real install; CI runs it).
test-serve: $(STAMP)
	$(BIN)/python -m pytest -m slow tests/test_serve_extra.py

# Every slow check: the notebook run in a fresh environment, two-process training, the serve extra (CI runs it).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf data/raw/synthetic-* data/processed/synthetic-* models/demo submissions/demo.csv
