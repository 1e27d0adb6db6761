# The README's two commands: `make demo` and `make test`. Each creates .venv on first use.
# The newest tested Python that runs and can make a venv (3.13, 3.12, then 3.11); pyenv's
# shims exist for versions that are installed but not selected, so each is tried, and
# pyenv's own installations are looked at too. Any other: make test PYTHON=/path/to/python.
TESTED_PYTHONS := 3.13 3.12 3.11
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for v in $(TESTED_PYTHONS); do \
	for p in python$$v $$(ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/$$v.*/bin/python$$v 2>/dev/null | sort -rV); do \
	  $$p -c 'import venv, ensurepip' >/dev/null 2>&1 && { $$p -c 'import sys; print(sys.executable)'; exit 0; }; \
	done; done; echo python3)
endif
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
	$(PY) -m pip install --quiet -e '.[test]'  # the core and every extra (train, plot, sweep, experiments)
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
