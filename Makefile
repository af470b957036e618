VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: test demo bench lint venv clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m evloop.cli demo

bench: $(STAMP)
	$(PY) benchmarks/bench.py

lint: $(STAMP)
	$(VENV)/bin/ruff check evloop tests examples benchmarks
	$(VENV)/bin/ruff format --check evloop tests examples benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
