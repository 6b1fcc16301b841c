"""A small Hugging Face Hub over HTTP on 127.0.0.1, enough for huggingface_hub 2.4's snapshot
downloads (point HF_ENDPOINT at `FakeHub.url`), and counting every request it answers.

It serves what `snapshot_download` uses (see huggingface_hub's _snapshot_download.py and
file_download.py): the revision info (`/api/{models,datasets}/{repo}/revision/{rev}`: `sha` and
`siblings`), the tree listing of a commit (`/api/.../tree/{commit}`), and each file at
`/{repo}/resolve/{rev}/{file}` (`/datasets/{repo}/resolve/...` for data sets), HEAD and GET, with
`X-Repo-Commit`, `ETag` and, for the large-file-storage kinds, `X-Linked-Etag`/`X-Linked-Size`.
No Xet headers: huggingface_hub then downloads over plain HTTP.

Access as on the Hub: a gated repository's metadata is public, its files need
`Authorization: Bearer <token>` (401 GatedRepo without one, 403 with another); an unknown
repository is a 404 RepoNotFound, an unknown revision a 404 RevisionNotFound. `fail_with = 503`
makes every request fail (an outage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".pt", ".h5", ".msgpack")


@dataclasses.dataclass
class Repo:
    kind: str
    repo_id: str
    commits: dict[str, dict[str, bytes]] = dataclasses.field(default_factory=dict)
    refs: dict[str, str] = dataclasses.field(default_factory=dict)
    token: str | None = None  # set: the repository is gated, its files need this token


def folder_files(folder: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class FakeHub:
    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_with: int | None = None
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(
        self,
        repo_id: str,
        files: dict[str, bytes],
        kind: str = "model",
        refs: tuple[str, ...] = ("main",),
        token: str | None = None,
    ) -> str:
        """A new commit of `repo_id` holding `files`, which `refs` (branches or tags) then point at;
        returns its 40-hex commit id."""
        repo = self.repos.setdefault((kind, repo_id), Repo(kind, repo_id))
        if token is not None:
            repo.token = token
        digest = hashlib.sha1(f"{kind}/{repo_id}/{len(repo.commits)}".encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        commit = digest.hexdigest()
        repo.commits[commit] = dict(files)
        repo.refs.update(dict.fromkeys(refs, commit))
        return commit

    def count(self, contains: str = "") -> int:
        """Requests answered so far whose path contains `contains`."""
        with self._lock:
            return sum(1 for _, path in self.requests if contains in path)

    # -- serving --------------------------------------------------------------------------------

    def _handler(self):
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                hub._answer(self, body=True)

            def do_HEAD(self):
                hub._answer(self, body=False)

        return Handler

    def _answer(self, request, body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        with self._lock:
            self.requests.append((request.command, path))
        if self.fail_with:
            return self._send(request, self.fail_with, b'{"error": "outage"}', body)
        parts = path.strip("/").split("/")
        if parts[:1] == ["api"] and len(parts) >= 6 and parts[1] in ("models", "datasets"):
            kind, repo_id, what, rev = parts[1][:-1], "/".join(parts[2:4]), parts[4], parts[5]
            inside = "/".join(parts[6:])
            return self._api(request, kind, repo_id, what, rev, inside, body)
        kind = "model"
        if parts[:1] == ["datasets"]:
            kind, parts = "dataset", parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(request, kind, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
        return self._send(request, 404, b'{"error": "no such route"}', body)

    def _commit(self, request, kind: str, repo_id: str, rev: str, body: bool) -> tuple[Repo, str] | None:
        repo = self.repos.get((kind, repo_id))
        if repo is None:
            self._send(request, 404, b'{"error": "Repository not found"}', body, {"X-Error-Code": "RepoNotFound"})
            return None
        commit = repo.refs.get(rev, rev if rev in repo.commits else None)
        if commit is None:
            self._send(request, 404, b'{"error": "Invalid rev id"}', body, {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo, commit

    def _api(self, request, kind, repo_id, what, rev, inside, body) -> None:
        found = self._commit(request, kind, repo_id, rev, body)
        if found is None:
            return
        repo, commit = found
        files = repo.commits[commit]
        if what == "revision":
            info = {
                "id": repo_id,
                "sha": commit,
                "private": False,
                "gated": "manual" if repo.token else False,
                "disabled": False,
                "siblings": [{"rfilename": name, "size": len(data)} for name, data in sorted(files.items())],
            }
            return self._send(request, 200, json.dumps(info).encode(), body)
        if what == "tree":
            entries = [
                self._tree_entry(name, data)
                for name, data in sorted(files.items())
                if not inside or name == inside or name.startswith(inside + "/")
            ]
            return self._send(request, 200, json.dumps(entries).encode(), body)
        return self._send(request, 404, b'{"error": "no such route"}', body)

    @staticmethod
    def _tree_entry(name: str, data: bytes) -> dict:
        entry = {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _resolve(self, request, kind, repo_id, rev, name, body) -> None:
        found = self._commit(request, kind, repo_id, rev, body)
        if found is None:
            return
        repo, commit = found
        if repo.token is not None:
            given = request.headers.get("Authorization", "")
            if given != f"Bearer {repo.token}":
                status = 403 if given else 401
                message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
                headers = {"X-Error-Code": "GatedRepo", "X-Error-Message": message}
                return self._send(request, status, json.dumps({"error": message}).encode(), body, headers)
        data = repo.commits[commit].get(name)
        if data is None:
            return self._send(request, 404, b'{"error": "Entry not found"}', body, {"X-Error-Code": "EntryNotFound"})
        headers = {"X-Repo-Commit": commit, "Content-Type": "application/octet-stream"}
        if name.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{hashlib.sha1(data).hexdigest()}"'
        self._send(request, 200, data, body, headers)

    @staticmethod
    def _send(request, status: int, data: bytes, body: bool, headers: dict | None = None) -> None:
        request.send_response(status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        if "Content-Type" not in (headers or {}):
            request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)


def point_this_process_at(server: FakeHub, monkeypatch, home: Path) -> None:
    """huggingface_hub in this process talks to `server` (it reads HF_ENDPOINT when it is
    imported, hence the reload), with its own HF_HOME and no token; `monkeypatch.undo()` and
    another reload put it back."""
    import importlib

    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    importlib.reload(huggingface_hub.constants)


def child_env(env: dict, server: FakeHub, home: Path, token: str | None = None) -> dict:
    """A job's environment (jobs.child_env) with the Hub at `server`: HF_HUB_OFFLINE unset, its own
    HF_HOME, and HF_TOKEN only when given."""
    out = {k: v for k, v in env.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    out.update(HF_ENDPOINT=server.url, HF_HOME=str(home))
    if token is not None:
        out["HF_TOKEN"] = token
    return out
