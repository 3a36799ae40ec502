# Everything a fresh machine with only Python needs: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,plot,bench,numpyro]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py --out out/demo

# Two precision passes, each a fresh set of processes (see tests/conftest.py): float32, then the
# tests that need float64.
test: $(STAMP)
	$(PY) -m pytest -n 2 -q
	JAX_ENABLE_X64=1 $(PY) -m pytest -n 2 -q

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 -q -m slow
	JAX_ENABLE_X64=1 $(PY) -m pytest -n 2 -q -m slow

bench: $(STAMP)
	$(PY) -m benchmarks.compile_depth --out results/compile_depth.json

clean:
	rm -rf $(VENV) out results
