"""ctloop.http, the retry policy, against a small scripted HTTP server on 127.0.0.1.

The server answers `/status/<a>,<b>,...` (or a path given in `statuses`) with those statuses in
turn (the last one repeats), `/drop` by closing the connection without an answer (the request arrived; its answer is lost),
and counts what it received. TorchServeClient is pointed at it too, to check which of its calls
are repeated."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import numpy as np
import pytest
import requests

from ctloop import http
from ctloop.process import free_port
from serving.client import TorchServeClient, TorchServeError


class Scripted(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.received: Counter[tuple[str, str]] = Counter()
        self.statuses: dict[str, list[int]] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, path: str, method: str = "GET") -> int:
        return self.received[(method, path)]


class Handler(BaseHTTPRequestHandler):
    server: Scripted

    def do_GET(self) -> None:
        self.answer()

    do_POST = do_PUT = do_DELETE = do_GET

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        with self.server.lock:
            self.server.received[(self.command, path)] += 1
            seen = self.server.received[(self.command, path)]
        if path == "/drop":
            self.close_connection = True
            return
        plan = path.rsplit("/", 1)[-1].split(",") if path.startswith("/status/") else ["200"]
        if path in self.server.statuses:
            plan = [str(status) for status in self.server.statuses[path]]
        status = int(plan[min(seen, len(plan)) - 1])
        body = b'[{"label": 1, "class_name": "1", "confidence": 0.9}]' if status == 200 else b'{"error": "busy"}'
        self.send_response(status)
        if status == 503 and self.headers.get("X-Test-Retry-After"):
            self.send_header("Retry-After", self.headers["X-Test-Retry-After"])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Scripted]:
    running = Scripted()
    thread = threading.Thread(target=running.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()
    thread.join(5)


@pytest.fixture
def quick() -> Iterator[requests.Session]:
    """The policy with short waits: 3 retries, waits 0, 0.02, 0.04 s (plus jitter)."""
    with http.session(backoff=0.01) as session:
        yield session


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_busy_and_gateway_answers_are_retried_until_one_succeeds(server, quick, status) -> None:
    answer = quick.get(f"{server.url}/status/{status},{status},200", timeout=5)
    assert answer.status_code == 200
    assert server.count(f"/status/{status},{status},200") == 3
    assert http.attempts(answer) == 3


def test_after_the_last_retry_the_last_answer_is_returned(server, quick) -> None:
    answer = quick.get(f"{server.url}/status/503", timeout=5)
    assert answer.status_code == 503 and answer.json() == {"error": "busy"}
    assert server.count("/status/503") == http.RETRIES + 1 == http.attempts(answer)


@pytest.mark.parametrize("status", [400, 401, 404, 409, 413, 500])
def test_client_errors_and_500_are_not_retried(server, quick, status) -> None:
    answer = quick.get(f"{server.url}/status/{status},200", timeout=5)
    assert answer.status_code == status
    assert server.count(f"/status/{status},200") == 1 == http.attempts(answer)


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_idempotent_methods_are_retried(server, quick, method) -> None:
    assert quick.request(method, f"{server.url}/status/503,200", timeout=5).status_code == 200
    assert server.count("/status/503,200", method) == 2


def test_a_post_is_not_repeated_once_it_reached_the_server(server, quick) -> None:
    assert quick.post(f"{server.url}/status/503,200", data=b"x", timeout=5).status_code == 503
    assert server.count("/status/503,200", "POST") == 1
    with pytest.raises(requests.ConnectionError) as caught:
        quick.post(f"{server.url}/drop", data=b"x", timeout=5)
    assert server.count("/drop", "POST") == 1 and http.attempts(caught.value) == 1


def test_a_safe_post_is_retried_like_a_get(server) -> None:
    with http.session(safe_post=True, backoff=0.01) as session:
        assert session.post(f"{server.url}/status/503,200", data=b"x", timeout=5).status_code == 200
        with pytest.raises(requests.ConnectionError):
            session.post(f"{server.url}/drop", data=b"x", timeout=5)
    assert server.count("/status/503,200", "POST") == 2
    assert server.count("/drop", "POST") == http.RETRIES + 1


def test_a_lost_answer_to_a_get_is_retried(server, quick) -> None:
    with pytest.raises(requests.ConnectionError) as caught:
        quick.get(f"{server.url}/drop", timeout=5)
    assert server.count("/drop") == http.RETRIES + 1 == http.attempts(caught.value)


def test_a_refused_connection_is_retried_for_every_method_with_backoff() -> None:
    url = f"http://127.0.0.1:{free_port()}/models"
    with http.session(retries=2, backoff=0.2) as session:
        started = time.monotonic()
        with pytest.raises(requests.ConnectionError, match="Max retries exceeded") as caught:
            session.post(url, data=b"x", timeout=5)
    waited = time.monotonic() - started
    assert 0.4 <= waited < 2, "waits 0 and 0.4 s (+ up to 0.1 s jitter) between the 3 attempts"
    assert http.attempts(caught.value, retries=2) == 3


def test_backoff_doubles_and_retry_after_is_honoured(server) -> None:
    with http.session(backoff=0.1) as session:
        started = time.monotonic()
        assert session.get(f"{server.url}/status/503", timeout=5).status_code == 503
        waited = time.monotonic() - started
        assert 0.6 <= waited < 1.5, "waits 0, 0.2 and 0.4 s (+ up to 0.05 s jitter each)"
        started = time.monotonic()
        answer = session.get(f"{server.url}/status/503,200", headers={"X-Test-Retry-After": "1"}, timeout=5)
        assert answer.status_code == 200 and 1 <= time.monotonic() - started < 3


def test_public_names() -> None:
    assert set(http.__all__) == {"BACKOFF", "BACKOFF_JITTER", "BACKOFF_MAX", "IDEMPOTENT_METHODS",
                                 "RETRIED_STATUSES", "RETRIES", "TIMEOUT", "attempts", "mlflow_environment",
                                 "probe", "retry", "session"}


def test_the_defaults() -> None:
    policy = http.retry()
    assert (policy.total, policy.backoff_factor, policy.backoff_jitter) == (3, 1, 0.5)
    assert set(policy.status_forcelist) == {429, 502, 503, 504}
    assert "POST" not in policy.allowed_methods and "POST" in http.retry(safe_post=True).allowed_methods
    assert not policy.raise_on_status


# TorchServeClient against the scripted server: which calls repeat.

@pytest.fixture
def torchserve(server) -> Iterator[TorchServeClient]:
    client = TorchServeClient(server.url, server.url, {"management": "m", "inference": "i"}, backoff=0.01)
    yield client
    client.close()


IMAGES = np.zeros((1, 8, 8), np.float32)


def test_torchserve_branch_predictions_and_canaries_are_retried_on_503(server, torchserve) -> None:
    server.statuses = {"/predictions/b1": [503, 503, 200], "/predictions/champion": [503, 200]}
    torchserve.predict_batch("b1", IMAGES)
    assert server.count("/predictions/b1", "POST") == 3
    assert torchserve.predict("champion", IMAGES, canary=True).labels == [1]
    assert server.count("/predictions/champion", "POST") == 2


def test_torchserve_logged_predictions_and_registration_are_not_repeated(server, torchserve) -> None:
    server.statuses = {"/predictions/champion": [503, 200], "/models": [503, 200]}
    with pytest.raises(TorchServeError, match="TorchServe 503: busy") as caught:
        torchserve.predict("champion", IMAGES)
    assert server.count("/predictions/champion", "POST") == 1 and caught.value.attempts == 1
    with pytest.raises(TorchServeError, match="TorchServe 503: busy"):
        torchserve.register("champion-v2.mar", "champion")
    assert server.count("/models", "POST") == 1


def test_torchserve_management_calls_are_retried(server, torchserve) -> None:
    server.statuses = {"/models/champion/2/set-default": [503, 200], "/models/champion/2": [503]}
    torchserve.set_default("champion", "2")
    assert server.count("/models/champion/2/set-default", "PUT") == 2
    with pytest.raises(TorchServeError, match="TorchServe 503: busy") as caught:
        torchserve.unregister("champion", "2")
    assert caught.value.attempts == http.RETRIES + 1 == server.count("/models/champion/2", "DELETE")


def test_torchserve_unreachable_fails_after_the_retries() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    client = TorchServeClient(down, down, {"management": "m", "inference": "i"}, retries=2, backoff=0.01)
    with pytest.raises(TorchServeError, match=f"TorchServe 0: POST {down}/models failed: ") as caught:
        client.register("champion-v2.mar", "champion")
    assert caught.value.attempts == 3
    client.close()
