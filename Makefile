# Two entry points for a fresh machine: `make demo` (main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/nowcast: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/nowcast

venv: $(BIN)/nowcast

demo: venv
	$(BIN)/nowcast demo

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python bench/storage_encoding.py
	$(BIN)/python bench/dataset_throughput.py

.PHONY: venv demo test bench
