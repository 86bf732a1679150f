# landscape: the two commands of the README.
#   make demo   set up (if needed), run the demo sweep (sweeps/demo.yaml), then draw its phase diagram and print
#               the phase table (landscape-phase reads the axes and thresholds from the sweep's phase: section).
#               On screen: the launch's own lines, warnings and errors, and the phase table; every line of the
#               launch (each cell's start, training, metrics, end) is in $(DEMO_DIR)/launch.log, the table of
#               the rows in $(DEMO_DIR)/summary.txt
#   make test   set up (if needed), run the linter and the formatter's check (make lint), then the test suite
#               (what .ci/run calls)
#   make notebook  execute the exploration notebook (analysis/explore_sweep.py; NOTEBOOK=... for another) on the
#               demo sweep's rows ($(DEMO_DIR), after make demo) and save it with its figures as
#               $(DEMO_DIR)/analysis/explore_sweep.ipynb, to open in Jupyter
# Set-up: a virtual environment in $(VENV). torch 2.13.0 (CPU build) is installed first unless the base
# Python already has a torch, which is then used as it is (the venv sees the base site-packages).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.landscape-setup
DEMO_DIR ?= outputs/demo
ARGS ?=
PYTEST_ARGS ?=

NOTEBOOK ?= analysis/explore_sweep.py

.PHONY: setup demo notebook test test-all lint format clean-demo bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	    echo "using the torch of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	@$(PY) -c "import torch" >/dev/null 2>&1 || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The demo's screen lines: the launcher's (planning, launching, its summary; not one line per cell), warnings,
# errors and what is not a log line (a traceback).
DEMO_SHOW := \]\[HYDRA\] [^[:space:]]|\]\[(WARNING|ERROR)\]|^[^[]

demo: setup
	@mkdir -p $(DEMO_DIR)
	@echo "running the demo sweep into $(DEMO_DIR); every line of the launch goes to $(DEMO_DIR)/launch.log"
	@{ $(VENV)/bin/landscape -m +sweep=demo hydra/launcher=local hydra.sweep.dir=$(DEMO_DIR) $(ARGS) 2>&1; \
	   echo $$? > $(DEMO_DIR)/.launch-rc; } | tee $(DEMO_DIR)/launch.log | grep --line-buffered -E '$(DEMO_SHOW)'; \
	 rc=$$(cat $(DEMO_DIR)/.launch-rc); rm -f $(DEMO_DIR)/.launch-rc; \
	 if [ "$$rc" != 0 ]; then echo "the launch failed (exit $$rc): see $(DEMO_DIR)/launch.log"; exit $$rc; fi
	@$(PY) -m landscape.cli.summary $(DEMO_DIR) > $(DEMO_DIR)/summary.txt && head -n 5 $(DEMO_DIR)/summary.txt && \
	 echo "  mean training loss and test accuracy per cell: $(DEMO_DIR)/summary.txt"
	$(VENV)/bin/landscape-phase $(DEMO_DIR) --out $(DEMO_DIR)/phase --formats png pdf

notebook: setup
	@test -d $(DEMO_DIR)/results/models || { echo "no rows in $(DEMO_DIR): run 'make demo' first"; exit 2; }
	$(PY) analysis/run_notebook.py $(NOTEBOOK) -p SWEEP_DIR=$(abspath $(DEMO_DIR)) \
	  --out $(DEMO_DIR)/analysis/$(notdir $(NOTEBOOK:.py=.ipynb))

test: setup lint
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The linter and the formatter's check (rules and their reasons: [tool.ruff] in pyproject.toml); `make format`
# rewrites the files.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Everything, the slow cases included (the nightly-style target).
test-all: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "" $(PYTEST_ARGS)

# The curvature anchors (benchmarks/anchors.py: landscape vs PyHessian, curvlinops, hessian-eigenthings) in their
# own environment $(BENCH_VENV), never in $(VENV): the anchors pull backpack and torchvision. torch is pinned in
# the same pip command as the anchors, so pip keeps the CPU build (otherwise torchvision drags in a CUDA torch).
# torchvision is installed but cannot import beside the CPU torch; no anchor imports it.
BENCH_VENV ?= .venv-bench
BENCH_TORCH ?= torch==2.13.0
BENCH_STAMP := $(BENCH_VENV)/.anchors-setup

$(BENCH_STAMP): pyproject.toml
	@[ -x $(BENCH_VENV)/bin/python ] || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet $(BENCH_TORCH)
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench]' $(BENCH_TORCH)
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	OMP_NUM_THREADS=1 $(BENCH_VENV)/bin/python benchmarks/anchors.py $(ARGS)
