"""Faults in serving and in the registry outside a pipeline run: a champion worker killed with
`kill -9` while requests are in flight, and MLflow going down in the middle of `ctloop promote`.
After each, the same invariants as after a faulty cycle (reliability_support.check_invariants)."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from components.deploy.reconcile import Reconciliation
from ctloop import registry
from ctloop.images import ImageSet
from ctloop_app import operate
from ctloop_app.cli import main
from ctloop_app.mlflow_server import MlflowServer
from ctloop_app.stack import LocalStack
from deploy_support import aliases, new_challenger
from reliability_support import check_invariants
from serving import store
from serving.client import TorchServeClient, TorchServeError

pytestmark = [pytest.mark.serving, pytest.mark.slow]


@dataclasses.dataclass(frozen=True)
class Sent:
    """One champion request: its id, and TorchServe's status (200, or the error's) and message."""

    request_id: str
    status: int
    message: str = ""


class Clients:
    """`threads` clients sending one part per request to the champion, as the line does, with
    request ids part-0, part-1, ..., until stopped; every answer is kept."""

    def __init__(self, stack: LocalStack, parts: ImageSet, threads: int = 4) -> None:
        self.stack, self.parts = stack, parts
        self.sent: list[Sent] = []
        self.lock = threading.Lock()
        self.next = 0
        self.stopped = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(threads)]

    def _send(self) -> None:
        client = TorchServeClient(self.stack.torchserve.inference_url, self.stack.torchserve.management_url,
                                  self.stack.client.keys)
        try:
            while not self.stopped.is_set():
                with self.lock:
                    position, self.next = self.next, self.next + 1
                request_id = f"part-{position}"
                try:
                    client.predict("champion", self.parts.images[position % len(self.parts)], request_id=request_id)
                    self.sent.append(Sent(request_id, 200))
                except TorchServeError as error:
                    self.sent.append(Sent(request_id, error.status, error.message))
        except BaseException as error:  # raised by __exit__
            self.errors.append(error)
        finally:
            client.close()

    def answered(self) -> int:
        return sum(1 for sent in self.sent if sent.status == 200)

    def wait_for_answers(self, count: int, timeout: float = 60) -> None:
        """Until `count` more requests than now got a 200."""
        target, deadline = self.answered() + count, time.monotonic() + timeout
        while self.answered() < target:
            statuses = Counter(sent.status for sent in self.sent)
            assert not self.errors and time.monotonic() < deadline, (
                f"fewer than {count} answers in {timeout} s: {statuses} {self.errors}")
            time.sleep(0.05)

    def __enter__(self) -> "Clients":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(60)
        if self.errors:
            raise self.errors[0]


def champion_worker(client: TorchServeClient, version: str, not_pid: int | None = None,
                    timeout: float = 60) -> tuple[int, float]:
    """The pid of the version's one READY worker (other than `not_pid`), once there is one, and
    the seconds it took to appear."""
    started = time.monotonic()
    while True:
        ready = [pid for status, pid in client.worker_states("champion", version)
                 if status == "READY" and pid != not_pid]
        if ready:
            return ready[0], time.monotonic() - started
        assert time.monotonic() - started < timeout, f"no new champion worker READY after {timeout} s"
        time.sleep(0.05)


def test_a_champion_worker_killed_mid_request_fails_that_request_alone(stack, boot) -> None:
    """`kill -9` of the champion's only worker while four clients keep it busy: the request it was
    answering gets TorchServe's error (507 or 500 "Worker died."), TorchServe starts a new worker,
    the requests queued meanwhile are answered by it, and the store holds exactly the answered
    predictions; the dead worker's segment may end in a cut-short line, no other."""
    parts = ImageSet.load(boot.production_pool)
    killed: list[int] = []
    restarts: list[float] = []
    with Clients(stack, parts) as clients:
        clients.wait_for_answers(50)
        for _ in range(3):  # a kill that falls between two requests fails none: kill the new worker
            pid, _ = champion_worker(stack.client, "1")
            assert "model_service_worker" in " ".join(psutil.Process(pid).cmdline())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            _, seconds = champion_worker(stack.client, "1", not_pid=pid)
            restarts.append(seconds)
            clients.wait_for_answers(50)  # the new worker answers
            if len(clients.sent) > clients.answered():
                break
    failed = [sent for sent in clients.sent if sent.status != 200]
    print(f"{len(killed)} kill(s); new worker READY after {', '.join(f'{s:.1f}' for s in restarts)} s; "
          f"{len(clients.sent)} requests, failed: {failed}")
    assert failed, f"none of {len(killed)} kills fell on a request in flight"
    assert len(failed) <= len(killed), f"requests other than the one in flight failed: {failed}"
    assert {(sent.status, sent.message) for sent in failed} <= {(507, "Worker died."), (500, "Worker died.")}, failed

    found = store.read_store(stack.store_dir)
    logged = Counter(record["request_id"] for record in found.records)
    answered = {sent.request_id for sent in clients.sent if sent.status == 200}
    assert all(logged[request_id] == 1 for request_id in answered), "an answered prediction is not in the store"
    # A worker may die after logging a prediction and before TorchServe sent the answer; such a
    # record is in that worker's own segment.
    died_answering = [sent.request_id for sent in failed if logged[sent.request_id]]
    dead_stems = tuple(f"-{pid}" for pid in killed)
    assert all(Path(record["sample"].partition("#")[0]).name.split(".")[0].endswith(dead_stems)
               for record in found.records if record["request_id"] in died_answering)
    assert all(logged[request_id] == 1 for request_id in died_answering)
    assert set(logged) == answered | set(died_answering), "the store holds predictions nobody asked for"
    assert check_invariants(stack, boot.golden_set, len(answered) + len(died_answering), dead_workers=killed) == "1"


@pytest.fixture
def registry_server(stack: LocalStack) -> Iterator[tuple[LocalStack, MlflowServer]]:
    """The stack with its registry behind `mlflow server` (ctloop_app/mlflow_server.py, what
    `make run` and `ctloop serve` start) on the stack's own database: a server the test can stop
    and start again on the same port."""
    with MlflowServer(stack.work_dir / "mlflow") as server:
        yield dataclasses.replace(stack, tracking_uri=server.tracking_uri), server


# Where MLflow goes down inside `ctloop promote`: in front of which registry call.
STOPS = {
    "between the TorchServe switch and the alias move": "promote_replacing",
    "between the previous-champion and the champion alias": "set_alias",
}


@pytest.mark.parametrize("where", STOPS)
def test_mlflow_down_during_promote_switches_serving_back_and_reconcile_agrees(
        registry_server, boot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        where: str) -> None:
    """`ctloop promote 2` with the MLflow server stopped once TorchServe serves v2 by default:
    the alias cannot move, so serving is switched back to v1 and the command fails saying so;
    with MLflow back, `reconcile` finds serving and the registry agreeing, and promote works."""
    stack, server = registry_server
    stack.fleet.save(tmp_path)
    _, version, _ = new_challenger(tmp_path / "v2", stack.tracking_uri, 52, boot.golden_set, train_set=boot.train_set)
    assert version == "2"
    stopped: list[tuple[str, float]] = []  # TorchServe's default when MLflow stopped, and when
    real = getattr(registry, STOPS[where])

    def stop_mlflow_first(*args, **kwargs):
        if not stopped and (STOPS[where] == "promote_replacing" or args[1] == registry.CHAMPION):
            server.stop()
            stopped.append((stack.client.default_version("champion"), time.monotonic()))
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, STOPS[where], stop_mlflow_first)
    assert main(["promote", version, "--stack", str(tmp_path)]) == 1
    seconds = time.monotonic() - stopped[0][1]
    monkeypatch.undo()
    error = capsys.readouterr().err.splitlines()[-1]  # after MLflow's own log lines
    print(f"promote failed {seconds:.1f} s after MLflow stopped")

    assert stopped[0][0] == "2", "MLflow was stopped before TorchServe served v2"
    assert error.startswith(f"ctloop promote: champion version 2 served but the registry alias could not move, so "
                            f"serving was switched back to version 1: cannot reach the MLflow tracking server at "
                            f"{stack.tracking_uri} to "), error
    assert 6 <= seconds < 15, "MLflow's call is retried 3 times (waits 0, 2, 4 s), then given up"
    assert stack.client.default_version("champion") == "1" and stack.client.versions("champion") == ["1"]
    assert stack.client.predict("champion", ImageSet.load(boot.golden_set).images[:1], canary=True).model_version == "1"
    assert not (stack.model_store / "champion-v2.mar").exists(), "the switched-back version's archive is left"

    server.start()
    moved = {"promote_replacing": None, "set_alias": "1"}[STOPS[where]]  # previous-champion had moved to v1
    assert aliases(stack.tracking_uri) == {registry.CHAMPION: "1", registry.PREVIOUS_CHAMPION: moved}
    assert operate.reconcile_fleet(stack.fleet) == Reconciliation("1", [])
    assert operate.status(stack.fleet).splits == []
    assert check_invariants(stack, boot.golden_set, answered=0) == "1"

    assert main(["promote", version, "--stack", str(tmp_path)]) == 0
    assert aliases(stack.tracking_uri) == {registry.CHAMPION: "2", registry.PREVIOUS_CHAMPION: "1"}
    assert check_invariants(stack, boot.golden_set, answered=0) == "2"
