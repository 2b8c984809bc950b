"""A stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, as much of it as ``HfApi.create_repo`` and
``HfApi.upload_folder`` use for small files: create a repo, validate a card's YAML, ask each file's upload mode
(every file "regular": sent inline, base64, in the commit), commit. It records what it was sent."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeHub(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.created: list[dict[str, Any]] = []
        self.validated: list[str] = []
        self.commits: list[dict[str, Any]] = []  # {"repo", "revision", "message", "files": {path: bytes}}


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def _reply(self, body: dict[str, Any], code: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        hub, path = self.server, self.path
        if path == "/api/repos/create":
            request = json.loads(body)
            hub.created.append({**request, "authorization": self.headers.get("authorization")})
            return self._reply({"url": f"{hub.url}/datasets/{request['organization']}/{request['name']}"})
        if path == "/api/validate-yaml":
            hub.validated.append(json.loads(body)["content"])
            return self._reply({"errors": [], "warnings": []})
        if path.startswith("/api/datasets/") and "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]})
        if path.startswith("/api/datasets/") and "/commit/" in path:
            repo, revision = path.removeprefix("/api/datasets/").split("/commit/", 1)
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            hub.commits.append({"repo": repo, "revision": revision, "message": lines[0]["value"]["summary"],
                                "files": {v["value"]["path"]: base64.b64decode(v["value"]["content"])
                                          for v in lines[1:] if v["key"] == "file"}})
            return self._reply({"commitUrl": f"{hub.url}/datasets/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
        return self._reply({"error": f"the fake hub has no {path}"}, 404)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def fake_hub() -> Iterator[FakeHub]:
    hub = FakeHub()
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.shutdown()
        hub.server_close()
        thread.join()
