"""The prediction store on a disk that really fills: a 256 KiB tmpfs (mounted by the test; it
needs root, as on this machine and in CI). Serving's writer keeps going, counts what it could not
store, truncates torn writes back, and the monitor reports and alerts once there is room again."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from components.monitor.logic import check_store_yield
from serving import store
from serving.archive import HANDLER_DIR

sys.path.insert(0, str(HANDLER_DIR))

from prediction_log import PredictionLog  # noqa: E402

SIZE = (28, 28)  # 3,136 bytes of samples per image: the disk fills within a few dozen requests


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)  # lazy: even with a file left open


def test_a_full_disk_loses_records_but_never_an_answer_and_the_monitor_alerts(
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reserve = small_disk / "reserve"  # an operator's file, deleted later to make room
    reserve.write_bytes(bytes(64 * 1024))
    log = PredictionLog(str(small_disk), "champion", "1", SIZE)
    rng = np.random.default_rng(0)
    sent: list[np.ndarray] = []
    for number in range(80):  # 250 KB of samples into the 192 KiB left
        image = rng.random((1, *SIZE), dtype=np.float32)
        log.append(f"part-{number}", f"ts-{number}", image, [number % 3], [str(number % 3)], [0.95])
        if log.lost == 0:
            sent.append(image[0])
    lost = log.lost
    assert lost > 0 and len(sent) + lost == 80

    stored = store.read_store(small_disk)
    assert len(stored.records) == len(sent) and not stored.cut_short and not stored.broken
    samples = store.load_samples(small_disk, [record["sample"] for record in stored.records])
    assert np.array_equal(samples, np.stack(sent)), "every stored record points at its own pixels"

    reserve.unlink()  # room again: the next record carries the count of those lost
    log.append("part-after", "ts-after", rng.random((1, *SIZE), dtype=np.float32), [0], ["0"], [0.95])
    assert log.lost == 0
    log.segment.close()  # fsynced; and the tmpfs can be unmounted
    found = store.read_store(small_disk)
    assert found.lost == lost and found.records[-1]["request_id"] == "part-after"

    monkeypatch.setenv("CTLOOP_SLACK_OUTBOX", str(tmp_path / "outbox.jsonl"))
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    result = check_store_yield(small_disk, len(found.records), 0.7, True, 0.05, 0.6, 0.9,
                               tmp_path / "window.jsonl", tmp_path / "decision.json")
    assert result.lost_records == lost and f"{lost} prediction(s) answered but not stored" in result.reason
    alert = json.loads((tmp_path / "outbox.jsonl").read_text().splitlines()[-1])
    assert alert["message"]["text"] == f"Prediction store losing records: {lost}"
