"""k8s/base/torchserve/ping.py, the TorchServe Deployment's probes: GET /ping with the inference key,
healthy only on 200; against a local stand-in for each answer, and against the real TorchServe."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from cicd_support import ROOT

PING = ROOT / "k8s" / "base" / "torchserve" / "ping.py"
KEY = "inference-key"


def probe(key_file: Path, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PING), str(key_file), url], capture_output=True, text=True,
                          timeout=30)


@pytest.fixture()
def fake_ping() -> Iterator[tuple[str, dict]]:
    """/ping answering `state["status"]` to the right key and 401 to anything else."""
    state = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {KEY}":
                status, body = 401, {"code": 401, "message": "Token Authorization failed"}
            else:
                status = state["status"]
                body = {"status": "Healthy" if status == 200 else "Unhealthy"}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ping", state
    finally:
        server.shutdown()
        server.server_close()


def key_file(tmp_path: Path, key: str = KEY) -> Path:
    path = tmp_path / "key_file.json"
    path.write_text(json.dumps({"management": {"key": "m"}, "inference": {"key": key}, "API": {"key": "a"}}))
    return path


def test_healthy_only_on_200_with_the_inference_key(fake_ping, tmp_path: Path) -> None:
    url, state = fake_ping
    assert probe(key_file(tmp_path), url).returncode == 0
    state["status"] = 500  # a model without its workers
    result = probe(key_file(tmp_path), url)
    assert result.returncode == 1 and "500" in result.stdout and "Unhealthy" in result.stdout


def test_unhealthy_on_a_wrong_or_missing_key_and_a_closed_port(fake_ping, tmp_path: Path) -> None:
    url, _ = fake_ping
    assert probe(key_file(tmp_path, "stale"), url).returncode == 1
    result = probe(tmp_path / "absent.json", url)
    assert result.returncode == 1 and "no inference key" in result.stdout
    (tmp_path / "half.json").write_text('{"inference": ')
    assert probe(tmp_path / "half.json", url).returncode == 1
    assert probe(key_file(tmp_path), "http://127.0.0.1:9/ping").returncode == 1


@pytest.mark.serving
def test_against_torchserve(serving) -> None:
    """TorchServe 0.12 refuses /ping without the inference key (why the probe is no httpGet) and
    answers it with the key from its key file."""
    url = f"{serving.server.inference_url}/ping"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    # 0.12 answers a missing token with 400 "Token Authorization failed"
    assert refused.value.code in (400, 401) and "token" in refused.value.read().decode().lower()
    result = probe(serving.server.key_file, url)
    assert result.returncode == 0, result.stdout
