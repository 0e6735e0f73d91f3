"""What must hold after any fault, and the tools to cause faults.

`check_invariants` is called at the end of every reliability test (and of the deploy test of
test_pipeline_e2e.py, whose run has faults of its own): the champion answers (as the
version MLflow's `champion` alias names), the prediction log lost or broke no record, and every
MLflow alias points at an existing, downloadable version, one version per training run.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Collection

import psutil
import torch
from torch import nn

from ctloop import registry
from ctloop.images import ImageSet
from ctloop.modelfile import load_model, save_model
from ctloop_app.stack import REGISTERED_MODEL, LocalStack
from ctloop_app.warm_tasks import running_tasks
from serving import store
from serving.client import TorchServeClient, TorchServeError


def check_invariants(stack: LocalStack, golden_set: Path, answered: int, cut_short_tail: bool = False,
                     dead_workers: Collection[int] = ()) -> str:
    """Assert the invariants; returns the champion version.

    Args:
        stack: the stack after the fault.
        golden_set: labelled images to ask the champion about (sent as canaries: not logged).
        answered: champion requests answered with 200 since the stack started, one image each.
        cut_short_tail: the test itself cut the log's last line short.
        dead_workers: pids of champion workers the test killed; each one's own segments may end
            in a cut-short line (where the kill fell is chance), no other segment may.
    """
    champion = registry.require_alias(REGISTERED_MODEL, registry.CHAMPION, stack.tracking_uri)
    client = TorchServeClient(stack.torchserve.inference_url, stack.torchserve.management_url,
                              stack.torchserve.keys())
    try:
        assert client.default_version("champion") == champion, "TorchServe's default is not MLflow's champion"
        images = ImageSet.load(golden_set).images[:8]
        answer = client.predict("champion", images, canary=True)
        assert answer.model_version == champion and len(answer.labels) == len(images)
    finally:
        client.close()
    _check_prediction_log(stack.store_dir, answered, cut_short_tail, dead_workers)
    _check_registry(stack.tracking_uri)
    return champion


def _check_prediction_log(store_dir: Path, answered: int, cut_short_tail: bool, dead_workers: Collection[int]) -> None:
    found = store.read_store(store_dir)
    records = found.records
    dead = tuple(f"-{pid}.jsonl" for pid in dead_workers)
    unexpected = [name for name in found.cut_short if not name.endswith(dead)]
    assert bool(unexpected) == cut_short_tail, f"segments ending in a cut-short line: {found.cut_short}"
    assert found.broken == [], f"broken lines in the prediction store: {found.broken}"
    assert len(records) == answered, f"{len(records)} logged predictions for {answered} answered requests"
    keys = Counter((record["server_id"], record["item"]) for record in records)
    assert not [key for key, count in keys.items() if count > 1], "a prediction was logged twice"
    if records:  # every record's sample is stored and readable
        samples = store.load_samples(store_dir, [record["sample"] for record in records])
        assert len(samples) == len(records)


def _check_registry(tracking_uri: str) -> None:
    client = registry.client(tracking_uri)
    found = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    runs = Counter(version.run_id for version in found)
    assert all(count == 1 for count in runs.values()), f"a training run registered twice: {runs}"
    aliases = client.get_registered_model(REGISTERED_MODEL).aliases
    assert registry.CHAMPION in aliases
    existing = {str(version.version) for version in found}
    assert set(map(str, aliases.values())) <= existing, f"an alias points at a missing version: {aliases}"
    with tempfile.TemporaryDirectory() as scratch:
        for version in sorted(existing, key=int):  # no orphan: every version has its files
            files = registry.download_version(REGISTERED_MODEL, version, Path(scratch) / version, tracking_uri)
            assert files.model_file.stat().st_size > 0 and files.train_set is not None


def restart_torchserve(stack: LocalStack) -> None:
    """Start TorchServe again on the same ports and model store; it serves what the store's
    desired state lists (serving.state), nothing registered by hand. The stack's client gets the
    new keys."""
    if stack.torchserve.process is not None:
        stack.torchserve.stop()
    stack.torchserve.start()
    stack.client.keys = stack.torchserve.keys()


class Watcher:
    """Polls `condition` on a thread until it holds, then runs `action` once (a fault)."""

    def __init__(self, condition: Callable[[], bool], action: Callable[[], None], period: float = 0.05) -> None:
        self.condition, self.action, self.period = condition, action, period
        self.fired = threading.Event()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                if self.condition():
                    self.action()
                    self.fired.set()
                    return
                time.sleep(self.period)
        except BaseException as error:  # reported by __exit__
            self.errors.append(error)

    def __enter__(self) -> "Watcher":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        if self.errors:
            raise self.errors[0]


def champion_versions(stack: LocalStack, client: TorchServeClient) -> list[str]:
    """TorchServe's registered champion versions ([] while it is unreachable)."""
    try:
        return client.versions("champion")
    except TorchServeError:
        return []


def stage_process(function: str) -> psutil.Process | None:
    """The running task of this test process's pipeline run that executes `function`."""
    pids = [pid for pid, name in running_tasks().items() if name == function]
    return psutil.Process(pids[0]) if pids else None


class _SwappedClasses(nn.Module):
    def __init__(self, model: nn.Module, order: list[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("order", torch.tensor(order))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).index_select(1, self.order)


def swap_classes(model_file: Path, first: int, second: int, out: Path) -> Path:
    """A copy of a ctloop model file (same card) whose scores for classes `first` and `second`
    trade places: a model that is wrong in one consistent way, as sure of itself as before."""
    model, card = load_model(model_file)
    order = list(range(len(card.class_names)))
    order[first], order[second] = second, first
    save_model(_SwappedClasses(model, order), card, out)
    return out
