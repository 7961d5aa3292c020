# Everything a newcomer needs: `make demo` runs the main job, `make test` the whole test suite.
# Both create .venv, install torch first (TORCH pins the CPU build that lies on disk on our machines;
# elsewhere `make TORCH=torch` takes your platform's default build), then the package with its extras.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,lab,docs,integrations]"
	touch $@

.PHONY: install demo test lint
install: $(BIN)/.installed

demo: install
	$(BIN)/gradwise lab run --suite quick --workers 2 --out lab-results

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q
