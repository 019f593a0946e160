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

# Retrain every shipped model from ../shared/data (configs/weights/*.yaml) and export them to
# nowcast/weights/ (see nowcast/weights/MODEL_CARD.md). Resumable: rerun after an interruption.
weights: venv
	$(BIN)/python -m nowcast.shipping --data $(or $(NOWCAST_SAMPLE_DATA),../shared/data)

bench: venv
	$(BIN)/python bench/storage_encoding.py
	$(BIN)/python bench/dataset_throughput.py
	for m in convlstm predrnn sa_convlstm; do $(BIN)/python bench/models.py --model $$m --workload W1; done
	$(BIN)/python bench/live_verification.py

# The deployment run for real (README "Deploy"): installs and starts a Docker engine when none runs
# (Debian's docker.io and docker-compose), builds the images, brings docker-compose.yml up, checks it end to
# end (tests/test_compose.py: seven steps, each named when it fails), takes it down with -v and stops the
# engine it started. Needs root or sudo.
compose-test: venv
	deploy/compose-test.sh

.PHONY: venv demo test bench weights compose-test
