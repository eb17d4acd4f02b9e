# Two commands for a new user: `make run` (the whole pipeline) and `make test` (the test suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Nothing calls home: DVC's analytics are off in .dvc/config; these cover Prefect, GX and the HF hub.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install run test lint format dag clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the main job: every DVC stage that is out of date
	$(BIN)/dvc repro

test: $(STAMP) lint  ## lint, then the test suite (tiny configs, real components)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

dag: $(STAMP)
	$(BIN)/dvc dag

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
