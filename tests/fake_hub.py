"""A small in-memory fake of the Hugging Face Hub HTTP API, for publishing/loading tests without network.

It serves the subset of routes that ``huggingface_hub`` (1.x/2.x) calls for ``create_repo``, ``upload_folder`` /
``create_commit`` (regular, base64-in-NDJSON files only), ``create_branch``, ``repo_info`` / ``model_info``,
``list_repo_tree``, ``hf_hub_download``, ``snapshot_download`` and ``whoami`` -- enough for ``push_to_hub`` and
``transformers`` ``from_pretrained("user/repo")``. Model repos only; repo ids must be ``namespace/name``.

In-process use (pytest)::

    from fake_hub import fake_hub            # in conftest.py, or directly in a test module
    def test_x(fake_hub):                    # env + huggingface_hub/transformers constants are patched
        HfApi().create_repo("user/x")        # -> goes to fake_hub.url; fake_hub.repos["user/x"] is inspectable

Subprocess use::

    with FakeHub() as hub:
        subprocess.run([sys.executable, "-c", code], env=hub_env(hub.url, tmp_path / "hf_home"), check=True)

Why the patching: ``huggingface_hub.constants`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_XET``,
``HF_HOME``-derived paths etc. *at import time*, and some values are copied further at import (the URL template used
by ``hf_hub_url``, the module-level ``huggingface_hub.hf_api.api`` behind ``huggingface_hub.upload_folder`` & co., the
trusted-host sets, transformers' cached ``hf_api()`` client and ``HF_MODULES_CACHE``). Setting env vars inside an
already-running process therefore does nothing; :func:`patch_hub_in_process` patches all of those.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest

FAKE_TOKEN = "hf_fake"
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_counter = itertools.count()  # makes every commit oid unique, even for identical content


def git_blob_oid(data: bytes) -> str:
    """git's blob sha1: the client computes the same value to skip unchanged files (preupload ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _front_matter(text: str):
    """YAML metadata block of a README (dict), ``{}`` if none; raises ValueError if it is not a YAML mapping."""
    if not text.startswith("---"):
        return {}
    block = text.split("\n---", 1)[0][3:]
    import yaml  # pyyaml is a project dependency

    try:
        data = yaml.safe_load(block) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"invalid YAML in README metadata: {err}") from err
    if not isinstance(data, dict):
        raise ValueError("README metadata must be a YAML mapping")
    return data


@dataclass
class Commit:
    oid: str
    title: str
    parent: str | None
    files: dict[str, bytes]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # branch name (incl. "refs/pr/N") -> commit oid
    created_at: str = field(default_factory=_now)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name or a full commit oid (what the client sends once it knows the sha)."""
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)

    def files(self, revision: str = "main") -> dict[str, bytes]:
        return self.resolve(revision).files

    def commit(self, branch: str, title: str, files: dict[str, bytes]) -> Commit:
        parent = self.branches.get(branch)
        digest = hashlib.sha1(f"{parent}|{title}|{next(_counter)}".encode())
        for path in sorted(files):
            digest.update(f"|{path}:{git_blob_oid(files[path])}".encode())
        commit = Commit(digest.hexdigest(), title, parent, dict(files))
        self.commits[commit.oid] = commit
        self.branches[branch] = commit.oid
        return commit


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    timeout = 60  # idle keep-alive connections end eventually instead of pinning a thread forever
    wbufsize = -1  # buffer headers + body into one send: separate small writes stall ~40 ms (Nagle + delayed ACK)
    server: "_Server"

    def log_message(self, *args):  # silence per-request stderr logging
        pass

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_DELETE = do_GET

    def _dispatch(self):
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        # split *before* unquoting: revisions are sent with "/" encoded (``refs%2Fpr%2F1``) as one segment
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        body = self._read_body()
        self.server.hub.requests.append((self.command, url.path))
        try:
            with self.server.hub.lock:
                status, payload, headers = self.server.hub.handle(self.command, parts, self.query, body, self)
        except HubError as err:
            status, payload = err.status, json.dumps({"error": err.message}).encode()
            header_message = err.message.encode("ascii", "backslashreplace").decode()  # headers are latin-1
            headers = {"Content-Type": "application/json", "X-Error-Message": header_message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
        self.send_response(status)
        for key, value in {"Content-Length": str(len(payload)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        # the whole body must be consumed, otherwise the next request on this keep-alive connection is garbled
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def authorized(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer hf_")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: "FakeHub"


def _json(data, status: int = 200, headers: dict | None = None):
    return status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})}


class FakeHub:
    """In-memory Hub. ``repos`` maps ``"ns/name"`` to :class:`Repo`; ``requests`` logs ``(method, path)``."""

    def __init__(self, user: str = "user", page_size: int = 1000):
        self.user, self.page_size = user, page_size  # page_size: tree listing page length (pagination tests)
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self._server: _Server | None = None
        self.url = ""

    def start(self) -> "FakeHub":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="fake-hub").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ routing
    def handle(self, method, parts, query, body, req):
        if parts[:2] == ["api", "whoami-v2"]:
            if not req.authorized():
                raise HubError(401, "Invalid credentials in Authorization header")
            return _json({"type": "user", "name": self.user, "fullname": self.user, "orgs": [],
                          "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}}})
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            try:
                _front_matter(json.loads(body).get("content", ""))
            except ValueError as err:
                return _json({"errors": [{"message": str(err)}], "warnings": []}, 400)
            return _json({"errors": [], "warnings": []})
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body), req)
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id, action, rest = "/".join(parts[2:4]), (parts[4:5] or [""])[0], parts[5:]
            repo = self._repo(repo_id, req)
            if method == "POST":
                if not req.authorized():  # write routes need a token, so tests can check a missing one errors
                    raise HubError(401, "Invalid credentials in Authorization header")
                if action == "preupload":
                    return self._preupload(repo, rest[0], json.loads(body))
                if action == "commit":
                    return self._commit(repo, rest[0], body, query.get("create_pr") == "1")
                if action == "branch":
                    return self._create_branch(repo, rest[0], json.loads(body or b"{}"))
            elif action in ("", "revision"):
                return _json(self._info(repo, rest[0] if rest else "main"))
            elif action == "tree":
                return self._tree(repo, rest[0], "/".join(rest[1:]), query, req)
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(self._repo("/".join(parts[:2]), req), parts[3], "/".join(parts[4:]), req)
        # anything else (telemetry, optional metadata routes...): the client tolerates a plain 404
        raise HubError(404, f"Fake Hub has no route {method} /{'/'.join(parts)}")

    # ------------------------------------------------------------------ helpers
    def _repo(self, repo_id: str, req) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not req.authorized()):  # like the Hub: private looks missing
            raise HubError(404, f"Repository Not Found: {repo_id}", "RepoNotFound")
        return repo

    @staticmethod
    def _commit_of(repo: Repo, revision: str, headers: dict | None = None) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound", headers)
        return commit

    def _create_repo(self, payload: dict, req):
        if not req.authorized():
            raise HubError(401, "Invalid credentials in Authorization header")
        if payload.get("type", "model") != "model":
            raise HubError(400, "Fake Hub only supports model repos")
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if repo_id in self.repos:  # the client turns 409 into success when exist_ok=True
            return _json({"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, 409)
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        repo = self.repos[repo_id] = Repo(repo_id, private)
        repo.commit("main", "initial commit", {".gitattributes": _GITATTRIBUTES})  # as on the real Hub
        return _json({"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _info(self, repo: Repo, revision: str) -> dict:
        commit = self._commit_of(repo, revision)
        try:
            card = _front_matter(commit.files.get("README.md", b"").decode())
        except ValueError:
            card = {}
        return {
            "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid,
            "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "tags": list(card.get("tags") or []), "library_name": card.get("library_name"),
            "pipeline_tag": card.get("pipeline_tag"), "cardData": card or None,
            "lastModified": commit.date, "createdAt": repo.created_at,
            "siblings": [{"rfilename": p, "size": len(d), "blobId": git_blob_oid(d)}
                         for p, d in sorted(commit.files.items())],
        }

    def _preupload(self, repo: Repo, revision: str, payload: dict):
        files = self._commit_of(repo, revision).files
        # always "regular": the client then sends contents base64-encoded inside the commit call (no LFS/Xet)
        return _json({"commitOid": repo.branches.get(revision, revision), "files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_oid(files[f["path"]]) if f["path"] in files else None}
            for f in payload["files"]]})

    def _commit(self, repo: Repo, revision: str, body: bytes, create_pr: bool):
        base = self._commit_of(repo, revision)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        if header.get("parentCommit") and not create_pr and header["parentCommit"] != base.oid:
            raise HubError(412, f"Parent commit {header['parentCommit']} is not the head of {revision}")
        files = dict(base.files)
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            elif key != "header":  # lfsFile: never requested, since preupload always answers "regular"
                raise HubError(400, f"Fake Hub does not support commit operation {key!r} (LFS/Xet uploads)")
        branch, pr_url = revision, None
        if create_pr:
            number = 1 + sum(b.startswith("refs/pr/") for b in repo.branches)
            branch, pr_url = f"refs/pr/{number}", f"{self.url}/{repo.repo_id}/discussions/{number}"
            repo.branches[branch] = base.oid
        elif revision not in repo.branches:
            raise HubError(400, f"Cannot commit to {revision}: not a branch")
        commit = repo.commit(branch, header.get("summary", ""), files)
        return _json({"commitUrl": f"{self.url}/{repo.repo_id}/commit/{commit.oid}",
                      "commitOid": commit.oid, "pullRequestUrl": pr_url})

    def _create_branch(self, repo: Repo, branch: str, payload: dict):
        if branch in repo.branches:  # the client ignores 409 when exist_ok=True
            raise HubError(409, f"Reference already exists: {branch}")
        repo.branches[branch] = self._commit_of(repo, payload.get("startingPoint") or "main").oid
        return _json({})

    def _tree(self, repo: Repo, revision: str, path: str, query: dict, req):
        commit = self._commit_of(repo, revision)
        prefix, recursive = (path.strip("/") + "/") if path else "", query.get("recursive") in ("True", "true", "1")
        entries: dict[str, dict] = {}
        for file_path, data in commit.files.items():
            if not file_path.startswith(prefix):
                continue
            rel = file_path[len(prefix):].split("/")
            for depth in range(1, len(rel)):  # the folders on the way down, as "directory" entries
                folder = prefix + "/".join(rel[:depth])
                entries[folder] = {"type": "directory", "path": folder, "size": 0,
                                   "oid": hashlib.sha1(f"{commit.oid}:{folder}".encode()).hexdigest()}
                if not recursive:
                    break
            if recursive or len(rel) == 1:
                entries[file_path] = {"type": "file", "path": file_path, "size": len(data),
                                      "oid": git_blob_oid(data)}
        if path and not entries:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        listing = [entries[k] for k in sorted(entries)]
        start = int(query.get("cursor", 0))
        headers = {}
        if start + self.page_size < len(listing):  # GitHub-style Link header, as the client paginates with it
            next_query = urlencode({**query, "cursor": start + self.page_size})
            headers["Link"] = f'<{self.url}{urlsplit(req.path).path}?{next_query}>; rel="next"'
        return _json(listing[start:start + self.page_size], headers=headers)

    def _resolve(self, repo: Repo, revision: str, path: str, req):
        commit = self._commit_of(repo, revision)
        if path not in commit.files:  # X-Repo-Commit lets the client cache the file's absence
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = commit.files[path]
        headers = {"ETag": f'"{git_blob_oid(data)}"', "X-Repo-Commit": commit.oid,
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        byte_range = req.headers.get("Range", "")
        if byte_range.startswith("bytes=") and "," not in byte_range:  # used by the client to resume downloads
            first, _, last = byte_range[6:].partition("-")
            start = int(first) if first else max(len(data) - int(last), 0)
            end = int(last) if first and last else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, data[start:end + 1], headers
        return 200, data, headers


# ---------------------------------------------------------------------------------------------- env & fixture
_OFFLINE_OR_TOKEN_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_OIDC_RESOURCE", "HUGGING_FACE_HUB_TOKEN")


def hub_env(fake_hub_url: str, hf_home, base: dict | None = None) -> dict[str, str]:
    """Environment for a *subprocess* that should talk to the fake Hub (``base`` defaults to ``os.environ``).

    Inside the current process these variables come too late: see :func:`patch_hub_in_process`.
    """
    hf_home = str(hf_home)
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _OFFLINE_OR_TOKEN_VARS}
    env.update({
        "HF_ENDPOINT": fake_hub_url,
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": os.path.join(hf_home, "hub"),  # explicit: an inherited HF_HUB_CACHE would win over HF_HOME
        "HF_MODULES_CACHE": os.path.join(hf_home, "modules"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",  # the fake Hub has no Xet/LFS storage
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": FAKE_TOKEN,
    })
    return env


def patch_hub_in_process(monkeypatch, fake_hub_url: str, hf_home) -> None:
    """Point the already-imported ``huggingface_hub`` (and ``transformers``, if installed) at the fake Hub.

    Everything goes through ``monkeypatch``, so it is undone at teardown. Patched: env vars (for code that reads them
    lazily and for child processes), ``huggingface_hub.constants`` values computed at import, the module-level
    ``huggingface_hub.hf_api.api`` client, the trusted-host sets, transformers' cached ``hf_api()`` client and its
    ``HF_MODULES_CACHE`` (remote-code modules land under ``hf_home`` instead of ``~/.cache``).
    """
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    hf_home = Path(hf_home)
    for key in _OFFLINE_OR_TOKEN_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in hub_env(fake_hub_url, hf_home, base={}).items():
        monkeypatch.setenv(key, value)
    for name, value in {
        "ENDPOINT": fake_hub_url,
        "HUGGINGFACE_CO_URL_TEMPLATE": fake_hub_url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_TOKEN_PATH": str(hf_home / "token"),  # never read a developer's real stored token
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
    }.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", fake_hub_url)  # behind huggingface_hub.upload_folder() etc.
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(fake_hub_url)})
    try:
        import transformers.dynamic_module_utils as dyn
        import transformers.utils.hub as t_hub
    except ImportError:
        return
    monkeypatch.setattr(t_hub, "_hf_api", None)  # cached HfApi keeps the endpoint it was built with
    modules = str(hf_home / "modules")
    for module in (t_hub, dyn, sys.modules.get("transformers.utils")):
        if module is not None and hasattr(module, "HF_MODULES_CACHE"):
            monkeypatch.setattr(module, "HF_MODULES_CACHE", modules)
    monkeypatch.syspath_prepend(modules)  # init_hf_modules() then skips adding its own (permanent) import-path entry


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A running :class:`FakeHub`, with this process patched to use it and a fresh ``HF_HOME`` under ``tmp_path``."""
    with FakeHub() as hub:
        patch_hub_in_process(monkeypatch, hub.url, tmp_path / "hf_home")
        yield hub
    for name in [m for m in sys.modules if m.split(".")[0] == "transformers_modules"]:
        del sys.modules[name]  # remote-code modules imported from this test's (now deleted) HF_HOME
