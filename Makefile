# batchpipe: every command a user or CI needs. Only Python >= 3.11 and pip are assumed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test check bench drill clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job on the embedded emulator (no API key, no network): a documented subset of the real catalog.
DEMO_LIMIT ?= 2000
demo: $(STAMP)
	$(BIN)/batchpipe run jobs/catalog-nightly.toml --api emulator --limit $(DEMO_LIMIT)
	$(BIN)/batchpipe status

test: $(STAMP)
	$(BIN)/pytest -q

check: $(STAMP)
	$(BIN)/ruff check batchpipe tests scripts
	$(BIN)/ruff format --check batchpipe tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

## The four benchmarks at sizes that finish in about 10 minutes on 2 cores (each prints a name=value summary last).
bench: $(STAMP)
	$(BIN)/python scripts/bench_build.py
	$(BIN)/python scripts/bench_poll.py
	$(BIN)/python scripts/bench_collect.py
	$(BIN)/python scripts/bench_e2e.py --items 5000

## The fault drill: SIGKILLs a run many times against a faulty standalone emulator, then checks every item.
drill: $(STAMP)
	$(BIN)/python scripts/fault_drill.py

clean:
	rm -rf $(VENV) .batchpipe .pytest_cache .mypy_cache .ruff_cache
