"""A local stand-in for the Hugging Face hub: repositories of files served in the hub's HTTP shape.

What `huggingface_hub` asks of a hub when it downloads (and all `pix2video download` needs):

- ``GET /api/models/{repo}[/revision/{rev}]?blobs=true``: the repository's commit and files,
  with sizes, git blob ids and, for large (LFS) files, their sha256;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, an ``ETag``
  (the sha256 of an LFS file, the blob id of a small one) and byte ``Range`` requests.

Every file request is recorded (method, path, Range start, bytes sent) so tests can count what
was fetched. `stall_after` makes the server stop sending a file after that many bytes (until
`release` is set), so a download can be interrupted at a known point.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import time
from dataclasses import dataclass, field

LFS_THRESHOLD = 100_000  # files at least this big are "LFS" files, as on the hub (sha256 etag)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Served:
    method: str
    path: str
    range_start: int
    sent: int = 0


@dataclass
class StandInHub:
    repos: dict[str, dict[str, bytes]]
    requests: list[Served] = field(default_factory=list)
    stall_after: dict[str, int] = field(default_factory=dict)  # path -> bytes, then wait
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    _server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> StandInHub:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
                hub._handle(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub._handle(self, body=True)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def file_requests(self, path: str, method: str = "GET") -> list[Served]:
        return [r for r in self.requests if r.path.endswith("/" + path) and r.method == method]

    # ------------------------------------------------------------------ protocol
    @staticmethod
    def etag(data: bytes) -> str:
        if len(data) >= LFS_THRESHOLD:
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()  # noqa: S324

    def _info(self, repo: str) -> dict:
        siblings = []
        for path, data in sorted(self.repos[repo].items()):
            entry = {"rfilename": path, "size": len(data), "blobId": self.etag(data)}
            if len(data) >= LFS_THRESHOLD:
                entry["blobId"] = hashlib.sha1(path.encode()).hexdigest()  # noqa: S324 - pointer's
                entry["lfs"] = {"size": len(data), "sha256": self.etag(data), "pointerSize": 134}
            siblings.append(entry)
        return {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}

    def _handle(self, request: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        path = request.path.split("?")[0]
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
            repo = m.group(1)
            if repo not in self.repos:
                return self._send(request, 404, b'{"error": "Repository not found"}', body)
            return self._send(request, 200, json.dumps(self._info(repo)).encode(), body)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not m or m.group(1) not in self.repos or m.group(3) not in self.repos[m.group(1)]:
            return self._send(request, 404, b"Not found", body, {"X-Error-Code": "EntryNotFound"})
        repo, _, file = m.groups()
        data = self.repos[repo][file]
        start = 0
        if r := re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", "")):
            start = int(r.group(1))
        served = Served("GET" if body else "HEAD", f"{repo}/{file}", start)
        self.requests.append(served)
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{self.etag(data)}"'}
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        part = data[start:]
        request.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(part))}.items():
            request.send_header(key, value)
        request.end_headers()
        if not body:
            return
        stall = self.stall_after.get(file)
        try:
            for i in range(0, len(part), 1 << 16):
                if stall is not None and start + served.sent >= stall:
                    while not self.release.wait(0.1):
                        pass
                    return  # the client was interrupted meanwhile
                chunk = part[i : i + (1 << 16)]
                request.wfile.write(chunk)
                served.sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    @staticmethod
    def _send(request, status: int, payload: bytes, body: bool, headers: dict | None = None):
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        if body:
            request.wfile.write(payload)


def wait_until(condition, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()
