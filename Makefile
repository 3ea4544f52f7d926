# Set-up that works on a fresh machine (CPU). `make test` is the README's test command.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint reproduce clean

$(BIN)/sparseprior: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: $(BIN)/sparseprior

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

reproduce: setup
	$(BIN)/sparseprior reproduce

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
