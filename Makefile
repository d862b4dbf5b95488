# The two commands a new user needs: `make run` (the system with a simulated fleet) and
# `make test` (every test). Both create .venv when missing and install the project.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test faults install lint whatif bench-ingest clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch (a file of it lies on disk); an unpinned torch would pull a
	# multi-GB CUDA build. GPU users: see README, "GPU".
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/bms run

# Browser tests drive Debian's Chromium through Playwright (Playwright's own browser
# download cannot reach the internet on these machines).
CHROMIUM ?= /usr/bin/chromium

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q chromium >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null); \
	else \
		echo "The browser tests need Chromium at $(CHROMIUM): 'sudo apt-get install chromium', or set CHROMIUM=/path (BMS_CHROMIUM for pytest)."; exit 1; \
	fi

# The fault tests (tests/faults) run in a session of their own: they start their own Ray
# instance and servers and kill parts of them (docs/reliability.md).
test: $(STAMP) $(CHROMIUM)
	BMS_CHROMIUM=$(CHROMIUM) $(PY) -m pytest
	$(PY) -m pytest tests/faults

# The fault tests alone, their figures appended to .bms-data/faults.jsonl and printed as
# the table of docs/reliability.md.
faults: $(STAMP)
	@mkdir -p .bms-data && rm -f .bms-data/faults.jsonl
	BMS_FAULT_REPORT=.bms-data/faults.jsonl $(PY) -m pytest tests/faults
	$(PY) -m tests.faults.report .bms-data/faults.jsonl

# The import contracts (pyproject.toml, [tool.importlinter]) are the architecture: a new
# import that runs back up a layer fails here.
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

whatif: $(STAMP)
	$(VENV)/bin/bms whatif sim/scenarios/baseline.yaml sim/scenarios/plus2_technicians.yaml --seeds 3 --out whatif-report

bench-ingest: $(STAMP)
	$(VENV)/bin/bms bench ingest --batteries 100000 --seconds 30

clean:
	rm -rf .bms-data .pytest_cache .ruff_cache .mypy_cache
