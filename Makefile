# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
# Each creates its own virtualenv in .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The supported CPython versions, from pyproject.toml's classifiers (scripts/supported_pythons.py,
# also used by scripts/test-every-python.sh); mypy checks the code as each of them would run it.
PY_VERSIONS = $(shell $(PY) scripts/supported_pythons.py)

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
	$(BIN)/ruff check src tests examples scripts
	for v in $(PY_VERSIONS); do $(BIN)/mypy --python-version $$v || exit 1; done

# The whole suite on every supported CPython the machine has (the default one, $(PY), must be
# there; others missing are reported as skipped), with the time each took.
test: sysdeps venv lint
	DEFAULT_PY=$(PY) bash scripts/test-every-python.sh

clean:
	rm -rf $(VENV) $(VENV)-3.* $(VENV)-nocc build *.egg-info src/*.egg-info src/zcnet/_speedups.*.so
