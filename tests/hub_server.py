"""A small Hugging Face Hub look-alike on loopback, for tests: `HF_ENDPOINT=http://127.0.0.1:PORT` makes
`huggingface_hub` (2.x) and `datasets` talk to it instead of huggingface.co, so downloads, `load_dataset` and
pushes run their real code paths. Only what those clients call for dataset repos is served:

    GET  /api/datasets/{repo}[/revision/{rev}]       repo info: sha + siblings
    GET  /api/datasets/{repo}/tree/{rev}[/{path}]     tree listing (recursive=1), one page
    POST /api/datasets/{repo}/paths-info/{rev}        entries of the given paths
    HEAD|GET /datasets/{repo}/resolve/{rev}/{path}    file bytes; ETag, X-Repo-Commit, Range (resumable downloads)
    POST /api/repos/create                            new empty repo
    POST /api/datasets/{repo}/preupload/{rev}         every file "regular" (inline in the commit; no LFS)
    POST /api/datasets/{repo}/commit/{rev}            ndjson commit: files (base64) and deletions

Bound to 127.0.0.1 on a free port; stops when the test's `with` block ends, or by itself after `lifetime_s`.
Each commit is an immutable snapshot (sha1 of its content), so revisions pin exactly as on the Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Repos in memory: repo_id -> list of (commit sha, {path: bytes}); the last commit is `main`."""

    def __init__(self, lifetime_s: float = 300.0):
        self.repos: dict[str, list[tuple[str, dict[str, bytes]]]] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) for assertions and debugging
        self.lifetime_s = lifetime_s
        self.lock = threading.Lock()
        self.fail_next_download_after: int | None = None  # cut the next GET body after N bytes (a dropped connection)
        self.broken_files: set[str] = set()  # file paths whose GET answers 500 (a download that keeps failing)

    # -- repository state ------------------------------------------------------------------------------------------

    def commit(self, repo_id: str, files: dict[str, bytes], deletions=(), message: str = "") -> str:
        with self.lock:
            history = self.repos.setdefault(repo_id, [])
            tree = dict(history[-1][1]) if history else {}
            for path in deletions:
                tree.pop(path, None)
            tree.update(files)
            digest = hashlib.sha1(message.encode() + json.dumps(
                sorted((path, git_blob_sha(data)) for path, data in tree.items())).encode()
                + str(len(history)).encode()).hexdigest()
            history.append((digest, tree))
            return digest

    def snapshot(self, repo_id: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        history = self.repos.get(repo_id)
        if not history:
            return None
        if revision in ("main", "HEAD", None):
            return history[-1]
        return next((entry for entry in history if entry[0] == revision), None)

    # -- server ----------------------------------------------------------------------------------------------------

    def __enter__(self):
        hub = self

        class Handler(_Handler):
            fake = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(self.lifetime_s, self.server.shutdown)  # never outlives a stuck test
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _entry(path: str, data: bytes | None) -> dict:
    if data is None:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
    return {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}


def _folders(tree: dict[str, bytes]) -> set[str]:
    folders = set()
    for path in tree:
        parts = path.split("/")[:-1]
        folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return folders


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.fake.requests.append((self.command, self.path, status))
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, payload, status: int = 200):
        self._send(status, json.dumps(payload).encode())

    def _not_found(self, message: str, code: str = "EntryNotFound"):
        self._send(404, json.dumps({"error": message}).encode(), {"X-Error-Code": code, "X-Error-Message": message},
                   head=self.command == "HEAD")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _snapshot(self, repo_id: str, revision: str):
        found = self.fake.snapshot(repo_id, unquote(revision))
        if found is None:
            if repo_id not in self.fake.repos:
                self._not_found(f"Repository {repo_id} not found", "RepoNotFound")
            else:
                self._not_found(f"Revision {revision} not found", "RevisionNotFound")
        return found

    # -- routes ----------------------------------------------------------------------------------------------------

    def do_HEAD(self):
        self._resolve(head=True)

    def do_GET(self):
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if path.startswith("/datasets/") and "/resolve/" in path:
            return self._resolve(head=False)
        match = re.match(r"^/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+))?$", path)
        if match:
            found = self._snapshot(match.group(1), match.group(2) or "main")
            if found:
                sha, tree = found
                self._json({"id": match.group(1), "sha": sha, "private": False, "disabled": False, "gated": False,
                            "downloads": 0, "likes": 0, "tags": [], "lastModified": "2026-01-01T00:00:00.000Z",
                            "siblings": [{"rfilename": name} for name in sorted(tree)]})
            return None
        match = re.match(r"^/api/datasets/([^/]+/[^/]+)/tree/([^/]+)/?(.*)$", path)
        if match:
            found = self._snapshot(match.group(1), match.group(2))
            if found:
                _, tree = found
                prefix = match.group(3).strip("/")
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                entries = []
                for name in sorted(set(tree) | _folders(tree)):
                    if prefix and not name.startswith(prefix + "/"):
                        continue
                    rest = name[len(prefix) + 1:] if prefix else name
                    if recursive or "/" not in rest:
                        entries.append(_entry(name, tree.get(name)))
                if prefix and prefix not in _folders(tree):
                    return self._not_found(f"{prefix} does not exist on {match.group(2)}")
                self._json(entries)
            return None
        self._not_found(f"no route for GET {path}")
        return None

    def do_POST(self):
        path = unquote(urlparse(self.path).path)
        body = self._body()
        if path == "/api/repos/create":
            payload = json.loads(body or b"{}")
            repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
            if repo_id in self.fake.repos:
                return self._send(409, json.dumps({"error": "You already created this dataset repo",
                                                   "url": f"{self.fake.endpoint}/datasets/{repo_id}"}).encode())
            self.fake.commit(repo_id, {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"},
                             message="initial commit")
            return self._json({"url": f"{self.fake.endpoint}/datasets/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":  # the card's metadata must at least parse as YAML
            content = json.loads(body)["content"]
            front = re.match(r"^---\n(.*?)\n---", content, re.S)
            try:
                yaml.safe_load(front.group(1) if front else "")
            except yaml.YAMLError as error:
                return self._send(400, json.dumps({"errors": [{"message": str(error)}]}).encode())
            return self._json({"warnings": []})
        match = re.match(r"^/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)$", path)
        if match:
            found = self._snapshot(match.group(1), match.group(2))
            if found:
                _, tree = found
                form = parse_qs(body.decode())
                wanted = form.get("paths", [])
                if not wanted and body.startswith(b"{"):
                    wanted = json.loads(body).get("paths", [])
                folders = _folders(tree)
                self._json([_entry(p, tree.get(p)) for p in wanted if p in tree or p in folders])
            return None
        match = re.match(r"^/api/datasets/([^/]+/[^/]+)/preupload/([^/]+)$", path)
        if match:
            files = json.loads(body)["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                          "oid": None} for f in files]})
        match = re.match(r"^/api/datasets/([^/]+/[^/]+)/commit/([^/]+)$", path)
        if match:
            repo_id = match.group(1)
            if repo_id not in self.fake.repos:
                return self._not_found(f"Repository {repo_id} not found", "RepoNotFound")
            files, deletions, summary = {}, [], ""
            for line in body.splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    summary = value.get("summary", "")
                elif item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    deletions.append(value["path"])
                elif item["key"] == "deletedFolder":
                    tree = self.fake.snapshot(repo_id, "main")[1]
                    deletions.extend(p for p in tree if p.startswith(value["path"].rstrip("/") + "/"))
                else:
                    return self._send(400, json.dumps({"error": f"unsupported commit item {item['key']}"}).encode())
            sha = self.fake.commit(repo_id, files, deletions, message=summary)
            return self._json({"commitUrl": f"{self.fake.endpoint}/datasets/{repo_id}/commit/{sha}",
                               "commitOid": sha, "pullRequestUrl": None})
        return self._not_found(f"no route for POST {path}")

    def _resolve(self, head: bool):
        path = unquote(urlparse(self.path).path)
        match = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if not match:
            return self._not_found(f"no route for {self.command} {path}")
        found = self._snapshot(match.group(1), match.group(2))
        if not found:
            return None
        sha, tree = found
        name = match.group(3)
        if name not in tree:
            return self._not_found(f"{name} does not exist at {match.group(2)}")
        if not head and name in self.fake.broken_files:
            return self._send(500, json.dumps({"error": "storage unavailable"}).encode())
        data = tree[name]
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{git_blob_sha(data)}"',
                   "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        status, start = 200, 0
        range_header = self.headers.get("Range")
        if range_header and not head:
            range_match = re.match(r"bytes=(\d+)-(\d*)", range_header)
            start = int(range_match.group(1))
            end = int(range_match.group(2)) if range_match.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        cut = self.fake.fail_next_download_after
        if not head and cut is not None and len(data) > cut:
            self.fake.fail_next_download_after = None
            # Announce the whole body, send part of it and drop the connection: an interrupted download.
            self.fake.requests.append((self.command, self.path, -status))
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            time.sleep(0.05)
            return None
        return self._send(status, data, {**headers, "Content-Length": str(len(data))}, head=head)
