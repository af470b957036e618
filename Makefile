VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: test demo bench bench-runs bench-instructions gpu-check lint venv clean dashboard
DASHBOARD_ASSETS := dashboards/node_modules/uplot/dist/uPlot.iife.min.js

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# visdom 0.2.4 is an sdist that only builds with setuptools<82 (constraints/).
$(STAMP): pyproject.toml constraints/visdom-build.txt | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --build-constraint constraints/visdom-build.txt -e '.[visdom]'
	touch $@

venv: $(STAMP)

# The dashboard's charting library comes from the npm registry (never committed,
# never fetched from a CDN at run time).
$(DASHBOARD_ASSETS): dashboards/package.json dashboards/package-lock.json
	cd dashboards && npm ci --no-audit --no-fund --silent
	touch $@

dashboard: $(DASHBOARD_ASSETS)

# Two workers: most tests wait on processes, sockets and browsers rather than compute.
# Modules with a module-scoped fixture stay on one worker (xdist_group).
test: $(STAMP) $(DASHBOARD_ASSETS)
	$(PY) -m pytest -q -n 2 --dist loadgroup

demo: $(STAMP) $(DASHBOARD_ASSETS)
	$(PY) -m evloop.cli demo --serve

bench: $(STAMP) $(DASHBOARD_ASSETS)
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/runs_bench.py

# Instructions per training step under valgrind's callgrind: deterministic, unlike
# timings on a shared machine (a few minutes; also part of make bench).
bench-instructions: $(STAMP)
	$(PY) benchmarks/instructions.py

# The runs page with 100 runs of 100,000 steps, in headless Chromium (a few minutes).
bench-runs: $(STAMP) $(DASHBOARD_ASSETS)
	$(PY) benchmarks/runs_bench.py

# On a CUDA machine: the no-host-sync test and the CUDA benchmark (a few minutes).
# With a Python that already has torch and evloop's dependencies: make gpu-check PY=python3
gpu-check: $(if $(filter $(VENV)/bin/python,$(PY)),$(STAMP))
	$(PY) -m pytest -q -p no:cacheprovider tests/test_host.py tests/test_sync_check.py tests/test_compile.py
	$(PY) benchmarks/gpu_check.py
	$(PY) benchmarks/gpu_bench.py

lint: $(STAMP)
	$(VENV)/bin/ruff check evloop tests examples benchmarks
	$(VENV)/bin/ruff format --check evloop tests examples benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
