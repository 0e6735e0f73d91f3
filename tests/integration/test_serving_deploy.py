"""Deploys against a real TorchServe under load: no failed request, rollback of a broken archive,
and a complete prediction log afterwards."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from ctloop.modelfile import load_model, predict_proba
from serving import store
from serving.archive import build_archive
from serving.client import TorchServeClient

from serving_support import random_images, write_model

pytestmark = pytest.mark.serving


@dataclass
class Load:
    """Steady traffic from one client thread; remembers every answer and what was sent."""

    client: TorchServeClient
    seed: int
    period: float = 0.01
    sent: dict[str, np.ndarray] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    count: int = 0
    slowest: float = 0.0

    def run(self, stop: threading.Event, minimum: int) -> None:
        rng = np.random.default_rng(self.seed)
        while not (stop.is_set() and self.count >= minimum):
            images = rng.random((int(rng.integers(1, 4)), 8, 8), dtype=np.float32)
            started = time.monotonic()
            try:
                answer = self.client.session.post(
                    self.client._prediction_url("champion", None), data=_npy(images), timeout=30,
                    headers={"Authorization": f"Bearer {self.client.keys['inference']}"})
                if answer.status_code == 200:
                    self.sent[answer.headers["x-request-id"]] = images
                else:
                    self.failures.append(f"{answer.status_code} {answer.text}")
            except OSError as error:
                self.failures.append(str(error))
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.count += 1
            time.sleep(max(0.0, self.period - (time.monotonic() - started)))


def _npy(images: np.ndarray) -> bytes:
    from ctloop.wire import encode_batch

    return encode_batch(images)


@pytest.fixture(scope="module")
def champion_v1(serving, model_files) -> Path:
    serving.deploy_archive(model_files["champion"], "champion", "1")
    return model_files["champion"]


def test_deploy_under_load_drops_no_request_and_logs_every_prediction(serving, champion_v1, tmp_path) -> None:
    from serving.deploy import deploy

    new_model = write_model("champion", tmp_path / "champion-v2.pt", seed=42)
    archive = build_archive(new_model, "champion", "2", serving.server.model_store)
    canary = random_images(32, 99)
    loads = [Load(TorchServeClient(serving.server.inference_url, serving.server.management_url,
                                   serving.client.keys), seed) for seed in (1, 2)]
    stop = threading.Event()
    threads = [threading.Thread(target=load.run, args=(stop, 250)) for load in loads]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    record = deploy(serving.client, archive, "champion", "2", canary, predict_proba(load_model(new_model)[0], canary))
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - started

    assert record.outcome == "deployed", record
    assert [step.name for step in record.steps] == ["register", "wait_ready", "smoke_test", "set_default", "verify"]
    assert serving.client.default_version("champion") == "2"
    assert [load.failures for load in loads] == [[], []]
    total = sum(load.count for load in loads)
    assert total >= 500
    print(f"\nload: {total} requests in {elapsed:.1f}s ({total / elapsed:.0f} req/s), slowest "
          f"{max(load.slowest for load in loads) * 1000:.0f} ms, deploy "
          + ", ".join(f"{step.name} {step.seconds:.2f}s" for step in record.steps))

    sent = {request_id: images for load in loads for request_id, images in load.sent.items()}
    found = store.read_store(serving.server.store_dir)
    records = found.records
    assert not found.cut_short
    assert len(records) == sum(len(images) for images in sent.values())
    assert {record["request_id"] for record in records} == set(sent)
    assert {record["model_version"] for record in records} == {"1", "2"}
    ordered = sorted(records, key=lambda record: (record["request_id"], record["item"]))
    samples = store.load_samples(serving.server.store_dir, [record["sample"] for record in ordered])
    assert np.array_equal(samples, np.concatenate([sent[request_id] for request_id in sorted(sent)]))


def test_broken_archive_is_rolled_back(serving, champion_v1, tmp_path) -> None:
    from serving.deploy import deploy

    before = serving.client.default_version("champion")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"this is not TorchScript")
    archive = build_archive(broken, "champion", "9", serving.server.model_store)
    canary = random_images(8, 5)
    record = deploy(serving.client, archive, "champion", "9", canary, np.full((8, 10), 0.1, dtype=np.float32))
    assert record.outcome == "rolled_back"
    assert "failed to start workers (worker 0 restarted" in record.reason
    assert [step.name for step in record.steps][:2] == ["register", "wait_ready"]
    assert record.steps[1].seconds < 30  # not the 120 s ready_timeout: a restarting worker has failed
    assert record.old_version == before
    assert serving.client.default_version("champion") == before
    assert "9" not in serving.client.versions("champion")
    assert serving.client.predict("champion", canary).model_version == before


def test_wrong_answers_are_rolled_back_after_nothing_changed(serving, champion_v1, model_files, tmp_path) -> None:
    from serving.deploy import deploy

    before = serving.client.default_version("champion")
    archive = build_archive(model_files["champion"], "champion", "10", serving.server.model_store)
    canary = random_images(8, 6)
    other = write_model("champion", tmp_path / "other.pt", seed=7)
    record = deploy(serving.client, archive, "champion", "10", canary, predict_proba(load_model(other)[0], canary))
    assert record.outcome == "rolled_back"
    assert record.steps[-2].name == "smoke_test" and not record.steps[-2].ok
    assert serving.client.default_version("champion") == before
    assert "10" not in serving.client.versions("champion")
