# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean

# uv resolves and downloads in parallel: ~25 s from a cold cache where pip takes ~95 s
# (measured on a 2-core CI machine); plain pip is the fallback where uv cannot be had.
# --compile-bytecode, as pip does: with PYTHONDONTWRITEBYTECODE=1 (set on these machines)
# every Ray worker would otherwise compile Ray from source again (make test took 2x as long)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	( $(PY) -m pip install -q uv && $(PY) -m uv pip install -q --compile-bytecode --python $(PY) -e ".[test,s3]" ) \
	  || $(PY) -m pip install -q -e ".[test,s3]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m ipfs_accelerate_py.cli demo

# two workers on one shared Ray (tests/ray_fixtures.py), then the tests that need the
# cluster to themselves (Ray Serve is one per cluster); plain `pytest` runs everything serially
# the serial run reads only the files that have serial tests: collecting the whole suite a
# second time costs ~15 s (any file that marks a test serial says `mark.serial`)
SERIAL_FILES = $(shell grep -l 'mark\.serial' tests/test_*.py)

# compileall: with PYTHONDONTWRITEBYTECODE=1 nothing caches our own modules' bytecode, and
# every actor process would compile them again (only changed files are recompiled here)
test: $(STAMP)
	$(PY) -m compileall -q ipfs_accelerate_py
	$(PY) -m pytest -q -n 2 -m "not serial"
	$(PY) -m pytest -q -m serial $(SERIAL_FILES)

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
