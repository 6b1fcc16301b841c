# finetune: fine-tune Hugging Face models as cloud batch jobs (SageMaker, AWS Batch, docker run).
#
#   docker build -t finetune .
#   docker run --gpus all -e FT_MODEL=s3://... -e FT_TRAIN_DATA=s3://... -e FT_OUTPUT_URI=s3://... finetune
#
# SageMaker starts the image as `docker run IMAGE train`; so does the default CMD.
#
# The "base" CUDA flavour is enough: PyTorch's Linux wheels bring their own CUDA and cuDNN
# libraries, so a "runtime" or "cudnn" base would only add a second copy of them. The base image
# provides the driver-version check. Any apt-based image with Python >= 3.10 works (the tests use a
# debootstrapped Debian bookworm); NVIDIA_DRIVER_CAPABILITIES below makes `--gpus all` mount the
# compute libraries on a base that does not set it. Which GPUs are visible is left to the runner.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

#checkov:skip=CKV_DOCKER_7:The base is the BASE_IMAGE argument, whose default above pins a version tag; checkov does not resolve arguments.
#checkov:skip=CKV_DOCKER_2:A training job runs to completion and exits; ECS (under AWS Batch) and SageMaker do not act on an image's HEALTHCHECK.
FROM ${BASE_IMAGE}

# The torch build to install before the project. Defaults give the CUDA build from PyPI; CPU test
# builds pass a directory holding the CPU wheel in TORCH_FIND_LINKS (or a TORCH_INDEX_URL).
ARG TORCH_REQUIREMENT=torch==2.13.0
ARG TORCH_INDEX_URL=
ARG TORCH_FIND_LINKS=

# tini is PID 1: it forwards SIGTERM (spot interruption, `docker stop`, SageMaker StopTrainingJob)
# to the job, which saves a checkpoint at the next step boundary, and it reaps zombies left by
# dataloader workers. TINI_SUBREAPER keeps it working, without a warning, under `docker run --init`.
# Versions come from the base image's distribution, which BASE_IMAGE chooses: not pinned here.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates python3 python3-venv tini \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TINI_SUBREAPER=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# A virtual environment keeps pip away from the distribution's Python (PEP 668).
# torch gets its own layer: it is the largest and changes least often. TORCH_REQUIREMENT pins it.
# hadolint ignore=DL3013
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"} \
        "$TORCH_REQUIREMENT"

WORKDIR /tmp/src

# Dependencies before sources, so a code change does not reinstall transformers and friends:
# install the project once with an empty package, then again, without dependencies, with the code.
# EXTRAS: the optional dependency groups of pyproject.toml to include (train = the job itself,
# always; tune = Optuna for `finetune tune`; gpu = bitsandbytes for QLoRA and 8-bit optimizers;
# mlflow / wandb = FT_REPORT_TO=mlflow / wandb, see docs/tracking.md), e.g. --build-arg EXTRAS=train,tune,mlflow.
ARG EXTRAS=train,tune
COPY pyproject.toml README.md ./
# The project's own extras, versions from pyproject.toml (hadolint reads ".[extras]" as a package).
# hadolint ignore=DL3013
RUN mkdir entrypoint && touch entrypoint/__init__.py \
    && pip install --no-cache-dir ".[${EXTRAS}]" \
    && rm -rf entrypoint build ./*.egg-info

COPY entrypoint ./entrypoint
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
    && rm -rf /tmp/src

# SageMaker's container contract: the job writes under /opt/ml (model, checkpoints, output).
# Hugging Face and pip caches go to a home the job's user owns (uid 1000 may have no passwd entry).
ENV HOME=/home/finetune \
    HF_HOME=/home/finetune/.cache/huggingface
RUN mkdir -p /opt/ml/model /opt/ml/checkpoints /opt/ml/output/data /opt/ml/input/data "$HF_HOME" \
    && chown -R 1000:1000 /opt/ml /home/finetune

WORKDIR /opt/ml
USER 1000:1000

ENTRYPOINT ["/usr/bin/tini", "--", "finetune"]
CMD ["train"]
