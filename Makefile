# Two commands do everything on a fresh machine with Python 3.11 and make:
#   make demo   sets up .venv if needed, then runs the whole pipeline on a synthetic competition
#   make test   sets up .venv if needed, then runs the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The oldest releases pyproject.toml admits, as Colab and Kaggle images carried them: installed first, they must
# survive the project's install untouched and run the tiny pipeline (CI runs this after make test).
OLDEST := torch==2.9.1 torchvision==0.24.1 fastai==2.8.5 timm==1.0.3
OLDEST_VENV := .venv-oldest

.PHONY: demo test test-all test-oldest test-serve test-slow setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/retinopathy pipeline --config demo

# One worker per core, each test file on one worker (so a file's fixtures are built once), one thread per worker.
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadscope

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''

test-oldest: $(STAMP)
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet $(OLDEST)
	$(OLDEST_VENV)/bin/python -m pip install --quiet -e '.[train]'
	$(OLDEST_VENV)/bin/python tests/oldest_stack.py --trainer $(BIN)/python $(OLDEST)

# The torch-free server in a fresh environment holding only the serve extra (a real install; CI runs it).
test-serve: $(STAMP)
	$(BIN)/python -m pytest -m slow tests/test_serve_extra.py

# Every slow check: the notebook run in a fresh environment, two-process training, the serve extra (CI runs it).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf data/raw/synthetic-* data/processed/synthetic-* models/demo submissions/demo.csv
