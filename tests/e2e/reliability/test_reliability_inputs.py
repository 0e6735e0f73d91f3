"""Hostile and odd inputs at the pipeline level (the per-stage cases are in tests/components,
tests/serving and tests/test_images_config.py): each gets a clear error naming the problem, and
nothing is deployed; or, for legitimate oddities, the cycle copes and the guards hold."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
from PIL import Image

from components.consensus.logic import consensus_filter
from ctloop.config import PipelineConfig
from ctloop.wire import encode_batch
from pipeline_support import cycle, outbox, play, versions
from reliability_support import check_invariants
from serving import store

WINDOW = 150
SMALL = PipelineConfig(recent_window=WINDOW, min_samples=50, train_epochs=30)


def png(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


GARBAGE = [  # (body, content type, what the 400 says)
    (png("RGB", (8, 8))[:40], "image/png", "unreadable PNG/JPEG"),
    (b"\xff\xd8\xff\xe0" + bytes(64), "image/jpeg", "unreadable PNG/JPEG"),
    (encode_batch(np.zeros((1, 8, 8, 3), np.float32)), "application/x-npy", "an extra channel axis"),
    (encode_batch(np.zeros((2, 28, 28), np.float32)), "application/x-npy", "wrong image size 28x28"),
    (json.dumps({"image": [[float("nan")] * 8] * 8}).encode(), "application/json", "NaN or infinite"),
    (b"\x93NUMPY garbage", "application/x-npy", "unreadable .npy batch"),
    (b"", "application/octet-stream", "malformed JSON"),
]


@pytest.mark.serving
def test_garbage_requests_are_refused_unlogged_and_an_empty_store_fails_the_monitor(stack, boot, tmp_path) -> None:
    headers = {"Authorization": f"Bearer {stack.torchserve.keys()['inference']}"}
    url = f"{stack.torchserve.inference_url}/predictions/champion"
    with requests.Session() as session:
        for body, content_type, message in GARBAGE:
            answer = session.post(url, data=body, headers={**headers, "Content-Type": content_type}, timeout=30)
            assert answer.status_code == 400 and message in answer.json()["error"], (message, answer.text)
    assert not store.list_segments(stack.store_dir)  # a refused request leaves no record

    run = cycle(stack, boot, tmp_path, SMALL)
    assert not run.succeeded and run.task("monitor-op").status == "FAILURE"
    assert run.task("collect-op") is None
    texts = outbox(stack)
    assert any(text.startswith("Run failed in stage monitor: PredictionLogError: ")
               and "no complete prediction in the store" in text for text in texts), texts
    assert versions(stack) == ["1"]
    assert check_invariants(stack, boot.golden_set, answered=0) == "1"


@pytest.mark.serving
@pytest.mark.slow
def test_nan_samples_in_the_store_fail_validate_with_an_alert(stack, boot, tmp_path) -> None:
    answered = len(play(stack, boot, drift=True, window=WINDOW))
    records = store.read_store(stack.store_dir).records
    for record in records[-3:]:  # corrupt three stored samples of the window in place
        shard, _, index = record["sample"].partition("#")
        with open(stack.store_dir / shard, "r+b") as samples:
            samples.seek(int(index) * 8 * 8 * 4)
            samples.write(np.full(8 * 8, np.nan, np.float32).tobytes())

    run = cycle(stack, boot, tmp_path, SMALL)
    assert not run.succeeded and run.task("validate-op").status == "FAILURE"
    assert run.task("consensus-op") is None and run.task("train-op") is None
    alerts = [text for text in outbox(stack) if text.startswith("Run failed in stage validate: ValidationError: ")]
    assert len(alerts) == 1 and "finite values: 3 images with NaN or infinite values" in alerts[0]
    assert versions(stack) == ["1"]
    assert check_invariants(stack, boot.golden_set, answered) == "1"


@pytest.mark.serving
@pytest.mark.slow
def test_a_window_of_one_class_retrains_without_forgetting_the_others(stack, boot, tmp_path) -> None:
    """A line that only made 3s for a while: a legitimate window. Merging the previous training set
    keeps every class in training, and the golden-set guard stops a challenger that forgot them."""
    answered = len(play(stack, boot, drift=True, window=WINDOW, only_class=3))
    run = cycle(stack, boot, tmp_path, SMALL)
    assert run.succeeded, run.error
    assert run.task("consensus-op").artifacts["metrics"]["metadata"]["kept"] > 0
    metrics = run.task("analyze-op").artifacts["metrics"]["metadata"]
    deployed = run.task("deploy-op") is not None
    if deployed:
        assert metrics["challenger_golden_accuracy"] >= metrics["champion_golden_accuracy"] - 0.02
    expected = "2" if deployed else "1"
    assert check_invariants(stack, boot.golden_set, answered) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"confidence_threshold": 1.5}, r"confidence_threshold must be in \[0, 1\], got 1.5"),
        ({"val_ratio": -0.1}, r"val_ratio must be in \[0, 0.9\], got -0.1"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
    ],
)
def test_malformed_run_parameters_of_consensus_are_refused_before_any_request(tmp_path, overrides, message) -> None:
    """A run's parameters can be edited in the Kubeflow UI, past PipelineConfig's checks."""
    arguments = {"confidence_threshold": 0.7, "val_ratio": 0.1, "batch_size": 64} | overrides
    with pytest.raises(ValueError, match=message):
        consensus_filter(tmp_path / "collected.npz", None, seed=0, train_out=tmp_path / "t.npz",  # type: ignore[arg-type]
                         holdout_out=tmp_path / "h.npz", report_out=tmp_path / "r.md", **arguments)
