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

# A worker that dies (XLA has segfaulted while compiling in long-lived workers, see the README's
# known issues) fails its test; the failures are then re-run once in fresh worker processes, so a
# real failure still fails the target.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -q || $(PY) -m pytest -n 2 -q --last-failed --last-failed-no-failures none

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -q -m slow

bench: $(STAMP)
	$(PY) -m benchmarks.compile_depth --out results/compile_depth.json

clean:
	rm -rf $(VENV) out results
