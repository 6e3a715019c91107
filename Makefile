# batchpipe: every command a user or CI needs. Only Python >= 3.11 and pip are assumed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser demo demo-cluster test check bench bench-quick drill cluster-drill clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m compileall -q batchpipe
	touch $(STAMP)

install: $(STAMP)

## The main job on the embedded emulator (no API key, no network): a documented subset of the real catalog.
DEMO_LIMIT ?= 2000
demo: $(STAMP)
	$(BIN)/batchpipe run jobs/catalog-nightly.toml --api emulator --limit $(DEMO_LIMIT)
	$(BIN)/batchpipe status

## The same job on a cluster on this machine: embedded PostgreSQL + SeaweedFS (S3) + a standalone emulator, the run
## planned once (batchpipe run --plan-only), three `batchpipe worker` processes sharing it, what each did, then
## `batchpipe status` from a fourth process. About half a minute; everything is deleted at the end.
DEMO_CLUSTER_LIMIT ?= 300
demo-cluster: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/demo_cluster.py --limit $(DEMO_CLUSTER_LIMIT)

## Debian's Chromium for the report's headless-browser test (tests/test_report.py). Installed only when it is
## missing and apt-get can run (root); elsewhere that one test says it is skipped and why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-headless-shell >/dev/null 2>&1 \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	       && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "make browser: no Chromium and cannot install it (not root or no apt-get); the report's browser test will be skipped"

test: $(STAMP) browser
	$(BIN)/pytest -q

check: $(STAMP)
	$(BIN)/ruff check batchpipe tests scripts
	$(BIN)/ruff format --check batchpipe tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

## The five benchmarks, every ratio as 3 interleaved pairs (A,B,B,A,...) printed min / median / max with the
## 1-minute load, its target and met/missed; each prints a `FINAL bench=NAME name=value ...` line last.
## About 16 minutes on 2 cores (measured 2026-12-01 04:03 at 1f73fa4: build 5.5, poll 0.9, collect 2.4, e2e 4.4,
## ledger 3.2 with its 1,000,000-item ledger built, then status and export against the sqlite3 shell; the ledger
## floors only with `scripts/bench_build.py --floor`: with and without sequential custom_ids, 4 minutes more); `make bench QUICK=1` (or
## `make bench-quick`) runs small sizes in about 2 (110 s measured at 7f8d550: build 25,000 rows, e2e 150 fast and
## 10 realistic images, collect 40, ledger 50,000 items, poll 200 batches).
## The targets are for the full sizes (quick runs are smoke runs: fixed start-up costs weigh more there).
## Children run this checkout's code (PYTHONPATH). `make bench | grep ^FINAL` gives the summary lines.
QUICK ?=
BENCH_ARGS := $(if $(QUICK),--quick,)
## The package is byte-compiled first, as pip does for a wheel: an editable install under PYTHONDONTWRITEBYTECODE=1
## (set on this machine) otherwise compiles every module again at each command's start (0.2 s of `batchpipe status`).
bench: $(STAMP)
	$(BIN)/python -m compileall -q batchpipe
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/bench_build.py $(BENCH_ARGS)
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/bench_poll.py $(BENCH_ARGS)
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/bench_collect.py $(BENCH_ARGS)
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/bench_e2e.py $(BENCH_ARGS)
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/bench_ledger.py $(BENCH_ARGS)

bench-quick:
	$(MAKE) bench QUICK=1

## The fault drill: SIGKILLs a run many times against a faulty standalone emulator, then checks every item.
drill: $(STAMP)
	$(BIN)/python scripts/fault_drill.py

## The cluster drill: three workers SIGKILLed at random and restarted against a faulty emulator, then every invariant.
cluster-drill: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python scripts/cluster_drill.py

clean:
	rm -rf $(VENV) .batchpipe .pytest_cache .mypy_cache .ruff_cache
