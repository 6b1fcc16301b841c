"""Which platform the job runs on (SageMaker, AWS Batch or local), as a pure function of the
environment and the SageMaker config files. Nothing here runs at import time."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

# The sagemaker-training toolkit's name for the container contract's root; /opt/ml on SageMaker.
# https://docs.aws.amazon.com/sagemaker/latest/dg/your-algorithms-training-algo-running-container.html
BASE_DIR_VARIABLE = "SAGEMAKER_BASE_DIR"
DEFAULT_BASE_DIR = "/opt/ml"
CONFIG_FILES = ("hyperparameters.json", "resourceconfig.json", "inputdataconfig.json")
TRAIN_CHANNELS = ("train", "training")
EVAL_CHANNELS = ("validation", "eval", "valid")
MODEL_CHANNELS = ("model",)


@dataclasses.dataclass(frozen=True)
class SageMakerPaths:
    base: Path
    channels: tuple[str, ...]

    def channel(self, name: str) -> Path:
        return self.base / "input" / "data" / name

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.base / "checkpoints"

    @property
    def output_data_dir(self) -> Path:
        return self.base / "output" / "data"

    @property
    def failure_file(self) -> Path:
        return self.base / "output" / "failure"

    @property
    def tensorboard_dir(self) -> Path:
        return self.base / "output" / "tensorboard"


@dataclasses.dataclass(frozen=True)
class Runtime:
    platform: str  # "sagemaker" | "batch" | "local"
    job_id: str | None = None
    attempt: int | None = None  # AWS Batch: 1 for the first try
    sagemaker: SageMakerPaths | None = None
    hyperparameters: Mapping[str, object] = dataclasses.field(default_factory=dict)
    hosts: tuple[str, ...] = ()
    current_host: str | None = None
    # AWS Batch multi-node parallel jobs (None otherwise); the main node has no main_node_address.
    num_nodes: int | None = None
    node_index: int | None = None
    main_node_index: int | None = None
    main_node_address: str | None = None

    def describe(self) -> str:
        if self.platform == "sagemaker":
            hosts = f", host {self.current_host} of {len(self.hosts)}" if len(self.hosts) > 1 else ""
            channels = self.sagemaker.channels if self.sagemaker is not None else ()
            return f"SageMaker training job {self.job_id or '?'} (channels: {', '.join(channels) or 'none'}{hosts})"
        if self.platform == "batch":
            node = f", node {self.node_index} of {self.num_nodes}" if self.num_nodes else ""
            return f"AWS Batch job {self.job_id} attempt {self.attempt}{node}"
        return "local"

    def platform_defaults(self) -> dict[str, str]:
        """Setting values (lower-case names) that follow from the platform."""
        if self.sagemaker is None:
            return {}
        sm = self.sagemaker
        defaults = {"output_uri": str(sm.model_dir), "checkpoint_uri": str(sm.checkpoint_dir)}
        for key, names in (("train_data", TRAIN_CHANNELS), ("eval_data", EVAL_CHANNELS), ("model", MODEL_CHANNELS)):
            found = next((n for n in names if n in sm.channels), None)
            if found:
                defaults[key] = str(sm.channel(found))
        return defaults


def read_platform_files(environ: Mapping[str, str]) -> dict[str, str]:
    """The SageMaker config files that exist, by file name (the only effect in this module)."""
    config = Path(environ.get(BASE_DIR_VARIABLE, DEFAULT_BASE_DIR)) / "input" / "config"
    found = {}
    for name in CONFIG_FILES:
        path = config / name
        if path.is_file():
            found[name] = path.read_text()
    return found


def decode_hyperparameters(raw: Mapping[str, object]) -> dict[str, object]:
    """SageMaker passes every hyperparameter as a string; the SageMaker Python SDK JSON-encodes
    them first ('"s3://b/k"', '3e-05', 'true'). Undo that where it applies."""
    out = {}
    for key, value in raw.items():
        if isinstance(value, str):
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = value
            value = decoded if isinstance(decoded, (str, int, float, bool, list, dict)) else value
        out[key] = value
    return out


def detect(environ: Mapping[str, str], files: Mapping[str, str]) -> Runtime:
    """The platform, from the environment and the contents of SageMaker's config files."""
    is_sagemaker = bool(
        files.get("resourceconfig.json") or environ.get("TRAINING_JOB_NAME") or environ.get("SM_TRAINING_ENV")
    )
    if is_sagemaker:
        base = Path(environ.get(BASE_DIR_VARIABLE, DEFAULT_BASE_DIR))
        channels = tuple(json.loads(files["inputdataconfig.json"])) if files.get("inputdataconfig.json") else ()
        if not channels and environ.get("SM_CHANNELS"):
            channels = tuple(json.loads(environ["SM_CHANNELS"]))
        resources = json.loads(files["resourceconfig.json"]) if files.get("resourceconfig.json") else {}
        hyper = (
            decode_hyperparameters(json.loads(files["hyperparameters.json"]))
            if files.get("hyperparameters.json")
            else {}
        )
        return Runtime(
            platform="sagemaker",
            job_id=environ.get("TRAINING_JOB_NAME"),
            sagemaker=SageMakerPaths(base=base, channels=channels),
            hyperparameters=hyper,
            # The toolkit's SM_HOSTS / SM_CURRENT_HOST stand in when resourceconfig.json is absent.
            hosts=tuple(resources.get("hosts") or json.loads(environ.get("SM_HOSTS") or "[]")),
            current_host=resources.get("current_host") or environ.get("SM_CURRENT_HOST"),
        )
    if environ.get("AWS_BATCH_JOB_ID"):
        attempt = environ.get("AWS_BATCH_JOB_ATTEMPT", "1")
        return Runtime(
            platform="batch",
            job_id=environ["AWS_BATCH_JOB_ID"],
            attempt=int(attempt) if attempt.isdigit() else None,
            # https://docs.aws.amazon.com/batch/latest/userguide/job_env_vars.html (multi-node parallel jobs)
            num_nodes=_int(environ.get("AWS_BATCH_JOB_NUM_NODES")),
            node_index=_int(environ.get("AWS_BATCH_JOB_NODE_INDEX")),
            main_node_index=_int(environ.get("AWS_BATCH_JOB_MAIN_NODE_INDEX")),
            main_node_address=environ.get("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"),
        )
    return Runtime(platform="local")


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def log_format(environ: Mapping[str, str]) -> str:
    """The format of every log line of the job's processes (the upload process's too)."""
    return process_label(environ) + "%(asctime)s %(levelname)s %(name)s: %(message)s"


def process_label(environ: Mapping[str, str]) -> str:
    """`[rank1] ` for a process of a job with several (torchrun's RANK and WORLD_SIZE), so their
    log lines can be told apart; empty otherwise."""
    if "RANK" in environ and _int(environ.get("WORLD_SIZE")) not in (None, 0, 1):
        return f"[rank{environ['RANK']}] "
    return ""
