# The README's two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# One BLAS thread: measured fastest for batch-128 matmuls on this 2-core machine.
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: demo test test-slow clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "symopt needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m symopt.demo

# Whole test modules per worker (--dist loadfile): each compiles its functions once.
test: $(STAMP)
	$(PY) -m pytest -n auto --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -n auto --dist loadfile -m slow

clean:
	rm -rf $(VENV) build *.egg-info
