"""A small Hub-compatible HTTP server on 127.0.0.1 for push tests (the real client talks to it)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HubState:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, dict[str, Any]] = {}  # repo → {"private": bool, "branches": {rev: {path: bytes}}}
        self.commits: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.fail_with: int | None = None
        self.url = ""


def _handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, code: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if code >= 400:
                self.send_header("X-Error-Message", payload.get("error", "error"))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _authorised(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {state.token}"

        def do_GET(self) -> None:  # noqa: N802
            state.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
            self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            state.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}))
            body = self._body()
            if state.fail_with:
                return self._reply(state.fail_with, {"error": "server error"})
            if not self._authorised():
                return self._reply(401, {"error": "Invalid credentials in Authorization header"})
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts[:3] == ["api", "repos", "create"]:
                req = json.loads(body)
                repo = f"{req.get('organization') or 'user'}/{req['name']}"
                if repo in state.repos:
                    return self._reply(409, {"error": "You already created this model repo", "url": f"{state.url}/{repo}"})
                state.repos[repo] = {"private": bool(req.get("private")) or req.get("visibility") == "private", "branches": {"main": {}}}
                return self._reply(200, {"url": f"{state.url}/{repo}", "name": repo, "id": repo})
            if parts[:1] == ["api"] and parts[1] == "validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            if len(parts) >= 6 and parts[:2] == ["api", "models"]:
                repo, action, rev = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
                if repo not in state.repos:
                    return self._reply(404, {"error": "Repository not found"})
                branches = state.repos[repo]["branches"]
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                if action == "branch":
                    branches.setdefault(rev, dict(branches["main"]))
                    return self._reply(200, {})
                if action == "commit":
                    tree = branches.setdefault(rev, {})
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    for line in lines:
                        if line["key"] == "file":
                            tree[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    oid = hashlib.sha1(body).hexdigest()
                    state.commits.append({"repo": repo, "revision": rev, "lines": lines})
                    return self._reply(200, {"commitUrl": f"{state.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True})
            self._reply(404, {"error": f"unknown endpoint {self.path}"})

    return Handler


class HubServer:
    """Start with ``with HubServer(token) as hub:``; ``hub.url`` is the endpoint."""

    def __init__(self, token: str):
        self.state = HubState(token)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.state.url = self.url
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
