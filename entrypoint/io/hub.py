"""The Hugging Face Hub: which FT_MODEL and FT_*_DATA values name a Hub repository, what a revision
resolves to (its commit and files) and downloading files of a commit, with `huggingface_hub` (which
honours HF_ENDPOINT and HF_TOKEN). Its failures become the user's (no access, no such repository
or revision: exit 64) or the world's (5xx, rate limits, timeouts: exit 75).

Nothing here decides which files a job takes or where they are kept: see job/sources.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from entrypoint.errors import UserError, WorldError

DEFAULT_REVISION = "main"
# The Hub's repository names: letters, digits, '-', '_', '.', at most 96 characters.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
MODEL_ID = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^\s@]+))?$")
DATA_URI = re.compile(rf"^hf://datasets/(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^\s@/]+))?(?:/(?P<path>.*))?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# A path that can only be meant as a local one, whether it exists or not.
LOCAL_PREFIXES = ("/", "./", "../", "~")


@dataclasses.dataclass(frozen=True)
class HubRepo:
    """A repository at a revision (a branch, tag or commit), and for data a folder or glob inside."""

    kind: str  # "model" or "dataset"
    repo_id: str  # org/name
    revision: str = DEFAULT_REVISION
    path: str = ""

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.revision}"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a revision of a repository resolved to: a commit and every file in it with its size."""

    repo: HubRepo
    commit: str
    files: dict[str, int]


def model_source(value: str, exists: Callable[[str], bool]) -> str:
    """'s3', 'local' or 'hub': an s3:// URI; an existing path, or one that can only be a path
    (absolute, ./, ../, ~); else a Hub id (org/name[@revision]). Anything else is 'local', and its
    absence is reported as such."""
    if value.startswith("s3://"):
        return "s3"
    if value.startswith(LOCAL_PREFIXES) or exists(value):
        return "local"
    return "hub" if MODEL_ID.match(value) else "local"


def parse_model(value: str) -> HubRepo:
    found = MODEL_ID.match(value)
    if not found:
        raise UserError(f"FT_MODEL={value!r} is not a Hub id: expected org/name or org/name@revision.")
    return HubRepo("model", found["repo"], found["revision"] or DEFAULT_REVISION)


def is_hub_data(uri: str | None) -> bool:
    return uri is not None and uri.startswith("hf://")


def parse_data(uri: str, setting: str) -> HubRepo:
    """hf://datasets/org/name[@revision][/folder-or-glob]."""
    found = DATA_URI.match(uri)
    if not found:
        raise UserError(
            f"{setting}={uri!r} is not a Hub data set URI: expected hf://datasets/org/name, optionally with "
            "@revision after the name and /folder, /file or /glob after that."
        )
    return HubRepo("dataset", found["repo"], found["revision"] or DEFAULT_REVISION, (found["path"] or "").strip("/"))


def is_commit(revision: str) -> bool:
    return bool(COMMIT.match(revision))


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: huggingface_hub makes no request."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def resolve(repo: HubRepo, setting: str) -> Snapshot:
    """The commit `repo.revision` points at now and the files in it (one request: the revision info)."""
    from huggingface_hub import DatasetInfo, HfApi, ModelInfo

    quiet()
    api = HfApi()
    info: ModelInfo | DatasetInfo
    with hub_errors(repo, setting):
        if repo.kind == "model":
            info = api.model_info(repo.repo_id, revision=repo.revision, files_metadata=True)
        else:
            info = api.dataset_info(repo.repo_id, revision=repo.revision, files_metadata=True)
    if not info.sha:
        raise WorldError(f"{setting}: the Hub answered without a commit for {repo.label}; try again.")
    files = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    return Snapshot(repo, info.sha, files)


def download(snapshot: Snapshot, files: list[str], cache_dir: Path, setting: str, workers: int = 8) -> Path:
    """The folder holding `files` of the snapshot's commit, downloaded into huggingface_hub's cache
    layout under `cache_dir` (files already there are not downloaded again)."""
    from huggingface_hub import snapshot_download

    quiet()
    repo = snapshot.repo
    with hub_errors(repo, setting):
        folder = snapshot_download(
            repo.repo_id,
            repo_type=repo.kind,
            revision=snapshot.commit,
            allow_patterns=[_literal(f) for f in files],
            cache_dir=str(cache_dir),
            max_workers=workers,
        )
    return Path(folder)


def quiet() -> None:
    """No progress bars and no line per HTTP request: in CloudWatch each would be a log line (the
    job logs one line per download)."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    logging.getLogger("httpx2").setLevel(logging.WARNING)


def _literal(name: str) -> str:
    """A file name as an fnmatch pattern matching only itself."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def token_present() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())


@contextlib.contextmanager
def hub_errors(repo: HubRepo, setting: str) -> Iterator[None]:
    """huggingface_hub's failures as the user's (access, missing repository or revision) or the
    world's (the Hub down, rate-limited or unreachable)."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub import errors as hf

    what = f"{setting}: {repo.repo_id} (revision {repo.revision}) on the Hub at {constants.ENDPOINT}"
    try:
        yield
    except hf.GatedRepoError as exc:
        status = _status(exc)
        if token_present():
            fix = "the token in HF_TOKEN has no access to it: accept its terms on the Hub with that token's account"
        else:
            fix = "no HF_TOKEN is set: accept its terms on the Hub, then set HF_TOKEN to a read token of that account"
        raise UserError(f"{what} is gated ({status}); {fix}.") from exc
    except hf.RevisionNotFoundError as exc:
        raise UserError(
            f"{what}: no such revision ({_status(exc)}). Give a branch, tag or commit of {repo.repo_id}."
        ) from exc
    except hf.RepositoryNotFoundError as exc:
        raise UserError(
            f"{what} was not found ({_status(exc)}): check the {repo.kind} id; a private repository also needs "
            "HF_TOKEN set to a token with access to it."
        ) from exc
    except hf.OfflineModeIsEnabled as exc:
        raise UserError(
            f"{what} is not mirrored at FT_CACHE_URI yet and HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE for the "
            "first attempt, or point FT_CACHE_URI at a cache that holds it."
        ) from exc
    except hf.HfHubHTTPError as exc:
        status = _status(exc)
        if status in (401, 403):
            raise UserError(
                f"{what}: access refused ({status}). Set HF_TOKEN to a token with read access to {repo.repo_id}."
            ) from exc
        if status in (400, 404):
            raise UserError(f"{what}: not found ({status}). Check the id and revision.") from exc
        raise WorldError(f"{what}: the Hub answered {status}; a later attempt retries. ({exc})") from exc
    except (httpx2.TransportError, hf.LocalEntryNotFoundError, OSError) as exc:
        raise WorldError(f"{what}: cannot reach the Hub ({exc}); a later attempt retries.") from exc


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)
