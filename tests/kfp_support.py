"""A local server answering the Kubeflow Pipelines v2beta1 routes kfp.Client calls (tests of
`ctloop submit`: in-process, from an installed wheel, and from CD's workflow under act)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml

TOKEN = "test-token"


class FakeKfp:
    """Just enough of the KFP API server: pipelines, versions, experiments, runs, recurring runs."""

    def __init__(self, multi_user: bool = False) -> None:
        self.multi_user = multi_user
        self.requests: list[tuple[str, str, dict, object]] = []
        self.pipelines: dict[tuple[str, str], str] = {}  # (namespace, display name) -> id
        self.recurring: dict[str, dict] = {}
        self.uploads: list[dict] = []
        self.counter = 0

    def new_id(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{self.counter}"

    def handle(self, method: str, path: str, query: dict, body: object) -> tuple[int, dict]:
        self.requests.append((method, path, query, body))
        base = "/apis/v2beta1/"
        route = path[len(base):] if path.startswith(base) else None
        if method == "GET" and route == "healthz":
            return 200, {"multi_user": self.multi_user}
        if method == "GET" and route == "pipelines":
            # Multi-user KFP: a namespace's pipelines are listed only to a request naming that
            # namespace; without one, only the shared pipelines (no namespace).
            name = json.loads(query["filter"][0])["predicates"][0]["stringValue"]
            namespace = query.get("namespace", [""])[0] if self.multi_user else ""
            key = (namespace, name)
            found = [{"pipeline_id": self.pipelines[key], "display_name": name}] if key in self.pipelines else []
            return 200, {"pipelines": found} if found else {}
        if method == "POST" and route == "pipelines":
            key = ((body.get("namespace") or "") if self.multi_user else "", body["display_name"])
            if key in self.pipelines:
                return 409, {"error": f"pipeline {body['display_name']!r} already exists", "code": 6}
            pipeline_id = self.new_id("pipeline")
            self.pipelines[key] = pipeline_id
            return 200, {"pipeline_id": pipeline_id, "display_name": body["display_name"]}
        if method == "POST" and route == "pipelines/upload_version":
            self.uploads.append({"query": query, "spec": body})
            return 200, {"pipeline_id": query["pipelineid"][0], "pipeline_version_id": self.new_id("version"),
                         "display_name": query["name"][0]}
        if method == "GET" and route == "experiments":
            return 200, {}
        if method == "POST" and route == "experiments":
            return 200, {"experiment_id": "experiment-1", "display_name": body["display_name"]}
        if method == "POST" and route == "runs":
            return 200, {"run_id": self.new_id("run"), **body}
        if method == "GET" and route == "recurringruns":
            return 200, {"recurringRuns": list(self.recurring.values())} if self.recurring else {}
        if method == "DELETE" and route and route.startswith("recurringruns/"):
            self.recurring.pop(route.split("/")[1])
            return 200, {}
        if method == "POST" and route == "recurringruns":
            recurring_id = self.new_id("recurring")
            self.recurring[recurring_id] = {"recurring_run_id": recurring_id, **body}
            return 200, self.recurring[recurring_id]
        return 404, {"error": f"no route {method} {path}"}

    def bodies(self, method: str, route: str) -> list:
        return [body for m, p, _, body in self.requests if m == method and p == f"/apis/v2beta1/{route}"]


def multipart_file(content_type: str, data: bytes) -> bytes:
    boundary = content_type.split("boundary=")[1].encode()
    for part in data.split(b"--" + boundary):
        head, _, payload = part.partition(b"\r\n\r\n")
        if b'name="uploadfile"' in head:
            return payload.rsplit(b"\r\n", 1)[0]
    raise AssertionError("no uploadfile part in the upload")


@contextmanager
def serve_fake_kfp(multi_user: bool = False, host: str = "127.0.0.1") -> Iterator[tuple[str, FakeKfp]]:
    """The fake on a free port of `host`; yields its URL and the fake (its requests, uploads...)."""
    fake = FakeKfp(multi_user=multi_user)

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                status, answer = 401, {"error": "missing bearer token"}
            else:
                content_type = self.headers.get("Content-Type", "")
                if content_type.startswith("multipart/form-data"):
                    body = next(yaml.safe_load_all(multipart_file(content_type, raw)))
                else:
                    body = json.loads(raw) if raw else None
                status, answer = fake.handle(self.command, url.path, parse_qs(url.query), body)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", fake
    finally:
        server.shutdown()
        server.server_close()
