# Two commands on a fresh machine (Python >= 3.11 and a C compiler): `make test`, `make bench`.
# The first run creates .venv and installs tiercache with its Cython build; later runs reuse it.

# The first interpreter that actually runs and is >= 3.11 (pyenv shims can exist yet fail to run).
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	  $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { command -v $$p; break; }; \
	done)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tiercache-installed
SOURCES := pyproject.toml setup.py $(wildcard ext/*.pyx ext/*.pxi ext/*.pxd ext/*.h)

.PHONY: test bench lint typecheck pytest install clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	@test -n "$(PYTHON)" || { echo "tiercache needs Python >= 3.11 on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,local]"
	@touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check tiercache tests benchmarks setup.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest tests

test: lint typecheck pytest

# Every default suite on an embedded LocalStack; JSON + PNG charts in bench-results/ (printed at
# the end). BENCH_ARGS="--quick" for a ~1-minute pass, "--suite l1" for one suite, "--strict".
bench: $(STAMP)
	$(VENV)/bin/tiercache bench --out bench-results $(BENCH_ARGS)

clean:
	rm -rf build $(VENV) *.egg-info tiercache/_ext/*.so ext/*.c
