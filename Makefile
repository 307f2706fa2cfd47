# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
# Each creates its own virtualenv in .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint venv sysdeps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'

sysdeps:
	bash scripts/ensure-system-deps.sh

# The main job: the benchmark's short version of every experiment (about a minute on 2 cores),
# with its table on the terminal and JSON + plot in bench-results/.
demo: sysdeps venv
	mkdir -p bench-results
	$(BIN)/zcnet bench quick --json bench-results/quick.json --plot bench-results/quick.png

lint: venv
	$(BIN)/ruff check src tests examples
	$(BIN)/mypy

test: sysdeps venv lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
